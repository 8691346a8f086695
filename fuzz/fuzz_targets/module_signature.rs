//! Fuzzes the module signature parser and verifier: any bytes, as a whole
//! module, must give `Ok` or a `SigError`, never a panic. The input is also
//! tried behind an ELF header and in front of a well-formed trailer, so the
//! fuzzer reaches the CMS parser quickly.

#![no_main]

use std::sync::OnceLock;

use composer::sign::Session;
use composer::sign::kmod::MAGIC;
use composer::sign::verify::{Trusted, verify};
use libfuzzer_sys::fuzz_target;

fn trusted() -> &'static [Trusted] {
    static T: OnceLock<Vec<Trusted>> = OnceLock::new();
    T.get_or_init(|| {
        let s = Session::start().expect("session key");
        vec![Trusted::new(s.certificate().clone())]
    })
}

fuzz_target!(|data: &[u8]| {
    let t = trusted();
    let _ = verify(data, t);
    let mut module = b"\x7fELF".to_vec();
    module.extend_from_slice(data);
    let _ = verify(&module, t);
    // data as the CMS of a well-formed trailer.
    module.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
    module.extend_from_slice(&(data.len() as u32).to_be_bytes());
    module.extend_from_slice(MAGIC);
    let _ = verify(&module, t);
});
