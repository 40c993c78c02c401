//! AFL++ driver of `depotfs_fuzz::dir_node`.
fn main() {
    afl::fuzz!(|data: &[u8]| depotfs_fuzz::dir_node(data));
}
