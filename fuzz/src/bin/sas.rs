//! AFL target: `ringmaster_fuzz::sas` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ringmaster_fuzz::sas(data);
    });
}
