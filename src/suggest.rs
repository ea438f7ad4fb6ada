//! Did-you-mean for misspelt names: used by the file parsers and the CLI alike.

/// ` (did you mean "x"?)` when a known word is close. A word cut short
/// (`proto`, `nvid`: at least 3 letters) is taken first: when one known word
/// starts with it, that one; when several do, they are named together. Else
/// the nearest known word a few letters off.
pub fn did_you_mean(word: &str, known: &[&str]) -> String {
    if word.chars().count() >= 3 {
        let mut longer: Vec<&str> =
            known.iter().copied().filter(|k| k.len() > word.len() && k.starts_with(word)).collect();
        longer.sort_unstable();
        longer.dedup();
        match longer.as_slice() {
            [] => {}
            [one] => return format!(" (did you mean \"{one}\"?)"),
            many if many.len() <= 4 => {
                let quoted: Vec<String> = many.iter().map(|k| format!("\"{k}\"")).collect();
                return format!(" (did you mean one of {}?)", quoted.join(", "));
            }
            _ => return String::new(),
        }
    }
    known
        .iter()
        .filter(|k| **k != word)
        .map(|k| (strsim::damerau_levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
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
        // A word cut short wins over a nearer one that it does not begin.
        assert_eq!(did_you_mean("stage", &["image", "stage_snapshots"]), " (did you mean \"stage_snapshots\"?)");
        assert_eq!(did_you_mean("nvid", &["nix", "nvidia"]), " (did you mean \"nvidia\"?)");
        assert_eq!(did_you_mean("docker-g", &["docker", "docker-gpu"]), " (did you mean \"docker-gpu\"?)");
        // Cut short of two: both.
        assert_eq!(
            did_you_mean("deb", &["debian-12", "debian-13", "ubuntu-24.04"]),
            " (did you mean one of \"debian-12\", \"debian-13\"?)"
        );
        // Never the word itself.
        assert_eq!(did_you_mean("web", &["web"]), "");
    }
}
