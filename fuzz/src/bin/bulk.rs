//! AFL target: `ringmaster_fuzz::bulk` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ringmaster_fuzz::bulk(data);
    });
}
