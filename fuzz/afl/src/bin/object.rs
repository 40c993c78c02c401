//! AFL++ driver of `depotfs_fuzz::object`.
fn main() {
    afl::fuzz!(|data: &[u8]| depotfs_fuzz::object(data));
}
