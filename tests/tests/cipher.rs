//! End to end: the real daemons negotiate the transport cipher their `cipher` keys allow, show
//! it in `upmt status`, and carry traffic with it. The keys force the choice, so the tests do
//! not depend on the lab machine's AES hardware. Needs root; each test builds its own lab.

use std::time::{Duration, Instant};

use upmt_tests::deploy::mh_status;
use upmt_tests::{DeployOptions, Deployment, Lab};

/// Deploys with the given `cipher` values, downloads `mid.bin` through the tunnel and returns
/// the session's cipher as `upmt status --json` names it.
fn negotiated(name: &str, mh_cipher: &str, an_cipher: &str) -> String {
    let lab = Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"));
    let upmt = Deployment::start(
        &lab,
        &DeployOptions {
            mh_extra: format!("cipher = \"{mh_cipher}\"\n"),
            an_extra: format!("cipher = \"{an_cipher}\"\n"),
            ..DeployOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    upmt.download_whole("mid.bin");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = mh_status(&lab).expect("upmt status --json");
        if let Some(cipher) = status["session"]["cipher"].as_str() {
            // Both daemons log the session's cipher.
            assert!(
                upmt.an.log().contains(cipher) && upmt.mh.log().contains(cipher),
                "{}",
                upmt.logs()
            );
            return cipher.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no session cipher: {status}\n{}",
            upmt.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn both_daemons_set_to_aes_carry_the_download_with_aes_256_gcm() {
    assert_eq!(
        negotiated("cipher_aes", "aes256gcm", "aes256gcm"),
        "aes-256-gcm"
    );
}

#[test]
fn an_anchor_set_to_chacha20_keeps_an_aes_offering_host_on_chacha20() {
    assert_eq!(
        negotiated("cipher_mixed", "aes256gcm", "chacha20"),
        "chacha20-poly1305"
    );
}
