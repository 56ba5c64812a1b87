//! The `upmt` key tool run as a user would: `genkey --out` writes a key file that the daemon
//! accepts (mode 0600). The daemon's refusal of a key file open to others is in `bad_files.rs`.

#[test]
fn genkey_out_writes_a_new_key_file_of_mode_0600() {
    upmt_sys::testing::assert_genkey_out_writes_a_0600_file(
        env!("CARGO_BIN_EXE_upmt"),
        "mh-genkey",
    );
}
