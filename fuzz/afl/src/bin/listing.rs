//! AFL++ driver of `depotfs_fuzz::listing`.
fn main() {
    afl::fuzz!(|data: &[u8]| depotfs_fuzz::listing(data));
}
