//! AFL++ driver of `depotfs_fuzz::serve_request`.
fn main() {
    afl::fuzz!(|data: &[u8]| depotfs_fuzz::serve_request(data));
}
