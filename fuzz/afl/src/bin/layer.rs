//! AFL++ driver of `depotfs_fuzz::layer`.
fn main() {
    afl::fuzz!(|data: &[u8]| depotfs_fuzz::layer(data));
}
