//! AFL target: `ringmaster_fuzz::query` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ringmaster_fuzz::query(data);
    });
}
