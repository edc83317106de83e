//! AFL target: `ringmaster_fuzz::gate` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ringmaster_fuzz::gate(data);
    });
}
