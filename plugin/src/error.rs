//! How the plugin's failures reach the runtime: each error becomes a CNI
//! error (a kernel error's code is chosen in weft-netkit's `kernel_error`).

use weft_conf::CniError;

/// Prefixes an error's message with the step that failed.
pub fn context<E: Into<CniError>>(step: &str) -> impl FnOnce(E) -> CniError + '_ {
    move |e| {
        let mut e = e.into();
        e.msg = format!("{step}: {}", e.msg);
        e
    }
}
