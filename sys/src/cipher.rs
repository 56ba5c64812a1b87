//! The `cipher` config key of both daemons and the AES hardware check behind its `auto`.
//!
//! The cores take a plain `fast_aes` flag ([`upmt_proto::client::ClientConfig::fast_aes`],
//! [`upmt_proto::anchor::AnchorConfig::fast_aes`]); reading the CPU's features is
//! platform-specific, so it happens here, once, in the drivers.

/// The `cipher` setting: which transport AEAD this end offers (mobile host) or accepts (anchor).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CipherSetting {
    /// AES-256-GCM where this CPU has AES hardware, ChaCha20-Poly1305 otherwise (the default).
    #[default]
    Auto,
    /// ChaCha20-Poly1305 only.
    ChaCha20,
    /// AES-256-GCM whenever the other end takes it too, hardware or not.
    Aes256Gcm,
}

impl CipherSetting {
    /// The accepted values, for error messages.
    pub const EXPECTED: &'static str = "\"auto\", \"chacha20\" or \"aes256gcm\"";

    /// The setting a config value names, if any.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(CipherSetting::Auto),
            "chacha20" => Some(CipherSetting::ChaCha20),
            "aes256gcm" => Some(CipherSetting::Aes256Gcm),
            _ => None,
        }
    }

    /// The value as written in a config.
    pub fn as_str(self) -> &'static str {
        match self {
            CipherSetting::Auto => "auto",
            CipherSetting::ChaCha20 => "chacha20",
            CipherSetting::Aes256Gcm => "aes256gcm",
        }
    }

    /// The cores' `fast_aes`: whether this end offers or accepts AES-256-GCM.
    pub fn fast_aes(self) -> bool {
        match self {
            CipherSetting::Auto => aes_hardware(),
            CipherSetting::ChaCha20 => false,
            CipherSetting::Aes256Gcm => true,
        }
    }
}

/// Whether this CPU runs AES-256-GCM in hardware: AES rounds and the carry-less multiply that
/// GHASH needs (x86-64 AES-NI + PCLMULQDQ, AArch64 AES + PMULL). Without both, ring's
/// constant-time software AES is several times slower than ChaCha20-Poly1305.
pub fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_parses_back_from_its_name_and_others_are_refused() {
        for s in [
            CipherSetting::Auto,
            CipherSetting::ChaCha20,
            CipherSetting::Aes256Gcm,
        ] {
            assert_eq!(CipherSetting::parse(s.as_str()), Some(s));
        }
        assert_eq!(CipherSetting::parse("aes"), None);
        assert_eq!(CipherSetting::parse("ChaCha20"), None);
    }

    #[test]
    fn forced_settings_ignore_the_hardware_and_auto_follows_it() {
        assert!(!CipherSetting::ChaCha20.fast_aes());
        assert!(CipherSetting::Aes256Gcm.fast_aes());
        assert_eq!(CipherSetting::Auto.fast_aes(), aes_hardware());
    }
}
