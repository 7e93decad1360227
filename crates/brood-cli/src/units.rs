//! Sizes with units, on input and output: `--memory 512M` or `1.5G`,
//! `--disk data:4G`, and `1.1 GiB` in tables. Units are binary (K, M, G,
//! T, with or without `iB`/`B`, any case); a plain number keeps its old
//! meaning (MiB for memory, GiB for disks).

/// Bytes per unit letter.
fn unit_bytes(u: &str) -> Option<u64> {
    let u = u.trim().to_ascii_lowercase();
    let u = u.trim_end_matches("ib").trim_end_matches('b');
    Some(match u {
        "" => return None,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Some(0),
    })
}

/// Parses `s` as a size: bytes, with `default` bytes per unit for a plain number.
fn parse_bytes(s: &str, default: u64) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a size: use a number with a unit, e.g. 512M or 4G"
        ));
    }
    let per = match unit_bytes(unit) {
        None => default,
        Some(0) => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use K, M, G or T (binary: 1G = 1024M)"
            ));
        }
        Some(b) => b,
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') || (whole.is_empty() && frac.is_empty()) {
        return Err(format!("{s:?} is not a number"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| format!("{s:?} is too large"))?
    };
    let mut bytes = whole
        .checked_mul(per)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    // Up to 9 fraction digits: exact enough for any unit here.
    let digits = frac.get(..frac.len().min(9)).unwrap_or_default();
    if !digits.is_empty() {
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a number"))?;
        let scale = 10u64.pow(u32::try_from(digits.len()).unwrap_or(9));
        let part = u128::from(n) * u128::from(per) / u128::from(scale);
        bytes = bytes
            .checked_add(u64::try_from(part).unwrap_or(u64::MAX))
            .ok_or_else(|| format!("{s:?} is too large"))?;
    }
    Ok(bytes)
}

/// Parses a memory size into MiB (a plain number is MiB): `512`, `512M`, `1.5G`.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let b = parse_bytes(s, 1 << 20)?;
    if b % (1 << 20) != 0 {
        return Err(format!("{s:?} is not a whole number of MiB"));
    }
    Ok(b >> 20)
}

/// Parses a disk size into GiB (a plain number is GiB): `10`, `4G`, `1T`.
pub fn parse_gib(s: &str) -> Result<u64, String> {
    let b = parse_bytes(s, 1 << 30)?;
    if b % (1 << 30) != 0 {
        return Err(format!(
            "{s:?}: disks are whole GiB; round it to {}G",
            b.div_ceil(1 << 30).max(1)
        ));
    }
    Ok(b >> 30)
}

/// A size in MiB for people: `512 MiB`, `1.1 GiB`, `2 GiB`, `1.5 TiB`.
pub fn human_mib(mib: u64) -> String {
    if mib < 1024 {
        return format!("{mib} MiB");
    }
    let (value, unit) = if mib < 1 << 20 {
        (mib as f64 / 1024.0, "GiB")
    } else {
        (mib as f64 / 1_048_576.0, "TiB")
    };
    let text = format!("{value:.1}");
    format!("{} {unit}", text.trim_end_matches(".0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("512MiB"), Ok(512));
        assert_eq!(parse_mib("1g"), Ok(1024));
        assert_eq!(parse_mib("1.5G"), Ok(1536));
        assert_eq!(parse_mib("2048k"), Ok(2));
        assert!(parse_mib("1k").unwrap_err().contains("whole number of MiB"));
        assert!(parse_mib("5X").unwrap_err().contains("unknown unit"));
        assert!(parse_mib("G").is_err());
        assert!(parse_mib("1.2.3G").is_err());
        assert!(parse_mib("99999999999999999999T").is_err());
    }

    #[test]
    fn disk_sizes() {
        assert_eq!(parse_gib("10"), Ok(10));
        assert_eq!(parse_gib("4G"), Ok(4));
        assert_eq!(parse_gib("1T"), Ok(1024));
        assert_eq!(parse_gib("2048M"), Ok(2));
        assert!(parse_gib("512M").unwrap_err().contains("round it to 1G"));
    }

    #[test]
    fn output() {
        assert_eq!(human_mib(512), "512 MiB");
        assert_eq!(human_mib(1024), "1 GiB");
        assert_eq!(human_mib(1126), "1.1 GiB");
        assert_eq!(human_mib(8192), "8 GiB");
        assert_eq!(human_mib(1 << 20), "1 TiB");
    }
}
