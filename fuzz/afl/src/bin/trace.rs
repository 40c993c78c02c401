//! AFL++ driver of `depotfs_fuzz::trace`.
fn main() {
    afl::fuzz!(|data: &[u8]| depotfs_fuzz::trace(data));
}
