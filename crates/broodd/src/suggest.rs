//! "Did you mean web?": the known name closest to one that was not found,
//! for error messages. Close means a small edit distance for the name's
//! length (optimal string alignment: a swap of two letters is one edit; strsim), so a typo finds its name and an
//! unrelated word finds nothing.

/// The candidate closest to `name`, if one is close enough to be a typo of it.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (strsim::osa_distance(name, c), c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// ` (did you mean "web"?)` for a close name, else nothing.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates).map_or_else(String::new, |c| format!(": did you mean {c:?}?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_name_and_strangers_find_none() {
        let names = ["web", "db-primary", "cache"];
        assert_eq!(closest("wbe", names), Some("web"));
        assert_eq!(closest("db-primray", names), Some("db-primary"));
        assert_eq!(closest("cahce", names), Some("cache"));
        assert_eq!(closest("zzz", names), None);
        assert_eq!(
            closest("web", names),
            None,
            "the name itself is no suggestion"
        );
        assert_eq!(did_you_mean("web2", ["web"]), ": did you mean \"web\"?");
        assert_eq!(did_you_mean("x", ["web"]), "");
    }
}
