//! The one place an error becomes an exit code: the first error in its chain
//! that knows its [`Kind`] decides, through each layer's own enum.

use crate::error::{Classified, Kind};

/// The kind of `err`: the first classified error in its chain, else [`Kind::Failed`].
pub fn kind(err: &anyhow::Error) -> Kind {
    err.chain().find_map(classify).unwrap_or(Kind::Failed)
}

/// The exit code for `err`.
pub fn code(err: &anyhow::Error) -> u8 {
    kind(err).exit_code()
}

fn classify(e: &(dyn std::error::Error + 'static)) -> Option<Kind> {
    fn as_kind<T: Classified + 'static>(e: &(dyn std::error::Error + 'static)) -> Option<Kind> {
        e.downcast_ref::<T>().map(Classified::kind)
    }
    as_kind::<crate::interrupt::Interrupted>(e)
        .or_else(|| as_kind::<crate::lock::Busy>(e))
        .or_else(|| as_kind::<crate::lock::Unusable>(e))
        .or_else(|| as_kind::<crate::ops::Error>(e))
        .or_else(|| as_kind::<crate::config::ConfigError>(e))
        .or_else(|| as_kind::<crate::images::Error>(e))
        .or_else(|| as_kind::<crate::libvirt::errors::Error>(e))
        .or_else(|| as_kind::<crate::fanout::Panicked>(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_is_found_through_context() {
        let bad = crate::config::ConfigError::Invalid("bad name".into());
        let err = Err::<(), _>(bad).context("creating foo").unwrap_err();
        assert_eq!(code(&err), 2);
        assert_eq!(code(&anyhow::anyhow!("plain")), 1);
        let busy = crate::lock::Busy { what: "vm:a".into(), holder: Default::default(), hint: String::new() };
        assert_eq!(kind(&anyhow::Error::new(busy).context("creating a")), Kind::Busy);
        assert_eq!(code(&anyhow::Error::new(crate::interrupt::Interrupted).context("pulling")), 130);
    }

    #[test]
    fn every_code_means_one_thing() {
        let mut codes: Vec<u8> = Kind::ALL.iter().map(|k| k.exit_code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), Kind::ALL.len());
    }
}
