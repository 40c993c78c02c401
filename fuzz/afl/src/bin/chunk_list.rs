//! AFL++ driver of `depotfs_fuzz::chunk_list`.
fn main() {
    afl::fuzz!(|data: &[u8]| depotfs_fuzz::chunk_list(data));
}
