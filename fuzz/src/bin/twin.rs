//! AFL target: `ringmaster_fuzz::twin` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ringmaster_fuzz::twin(data);
    });
}
