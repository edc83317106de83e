//! AFL target: `ringmaster_fuzz::manifest` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ringmaster_fuzz::manifest(data);
    });
}
