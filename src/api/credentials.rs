//! `dialer._check_base_url(url)`: a base_url is checked against dialer.allowed_hosts when it is
//! stored, as well as where each request is sent (src/dispatch.rs, DNS answers included).

use crate::api::process::raise;
use crate::error::DialerError;
use crate::gucs::Settings;
use pgrx::prelude::*;

#[pg_extern(stable, parallel_safe)]
fn _check_base_url(base_url: Option<&str>) {
    let Some(url) = base_url else { return };
    let list = match crate::hosts::AllowList::parse(&Settings::allowed_hosts_text()) {
        Ok(l) => l,
        Err(why) => raise(DialerError::InvalidArgument(why)),
    };
    if let Err(why) = list.check_url(url) {
        raise(DialerError::InvalidArgument(format!("base_url refused: {why}")));
    }
}
