//! The configuration loader: TOML into `Config`, then validation (names,
//! durations, bounds, attestors).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<credbroker::Config>(text)
        && config.validate().is_ok()
    {
        let _ = config.environments();
        let _ = config.public_url();
        let _ = config.store_url();
    }
});
