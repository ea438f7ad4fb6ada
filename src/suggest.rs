//! Did-you-mean for misspelt names: used by the file parsers and the CLI alike.

/// ` (did you mean "x"?)` when a known word is close: a few letters off, or
/// the word cut short (`proto` for `protocol`).
pub fn did_you_mean(word: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3) || (word.len() >= 3 && k.starts_with(word)))
        .min()
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn close_words_and_cut_ones_are_suggested() {
        let keys = ["host", "guest", "address", "protocol"];
        assert_eq!(did_you_mean("gust", &keys), " (did you mean \"guest\"?)");
        assert_eq!(did_you_mean("proto", &keys), " (did you mean \"protocol\"?)");
        assert_eq!(did_you_mean("pr", &keys), "", "two letters are too few to guess from");
        assert_eq!(did_you_mean("memory", &keys), "");
    }
}
