//! AFL target: `ringmaster_fuzz::connection_string` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ringmaster_fuzz::connection_string(data);
    });
}
