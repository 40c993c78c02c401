//! AFL++ driver of `depotfs_fuzz::manifest`.
fn main() {
    afl::fuzz!(|data: &[u8]| depotfs_fuzz::manifest(data));
}
