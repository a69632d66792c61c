//! Style weights: the user's `--style N` or `--style-mix 3:0.5,7:0.5` turned
//! into the weight vector the multi-style model takes.

use thiserror::Error;

/// Why a style choice was refused.
#[derive(Debug, Error, PartialEq)]
pub enum StyleError {
    #[error("style index must be 0 to {max}, got {got}")]
    OutOfRange { got: i64, max: usize },
    #[error("bad style mix {spec:?}: use e.g. 3:0.5,7:0.5 ({why})")]
    BadMix { spec: String, why: String },
    #[error("style weights must be non-negative and not all zero")]
    Zero,
}

/// One style at full weight.
pub fn single(index: i64, count: usize) -> Result<Vec<f32>, StyleError> {
    let i = check(index, count)?;
    let mut w = vec![0.0; count];
    w[i] = 1.0;
    Ok(w)
}

/// A blend such as `3:0.5,7:0.5` (a bare index means weight 1), normalised to sum 1.
pub fn mix(spec: &str, count: usize) -> Result<Vec<f32>, StyleError> {
    let bad = |why: &str| StyleError::BadMix {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let mut w = vec![0.0f32; count];
    let mut any = false;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (idx, wt) = part.split_once(':').unwrap_or((part, "1"));
        let idx: i64 = idx
            .trim()
            .parse()
            .map_err(|_| bad(&format!("{idx:?} is not a style index")))?;
        let wt: f32 = wt
            .trim()
            .parse()
            .map_err(|_| bad(&format!("{wt:?} is not a weight")))?;
        if !wt.is_finite() || wt < 0.0 {
            return Err(StyleError::Zero);
        }
        w[check(idx, count)?] += wt;
        any = true;
    }
    if !any {
        return Err(bad("no styles given"));
    }
    normalise(w)
}

/// Scales weights to sum 1, refusing negative or all-zero vectors.
pub fn normalise(mut w: Vec<f32>) -> Result<Vec<f32>, StyleError> {
    let sum: f32 = w.iter().sum();
    if w.iter().any(|x| !x.is_finite() || *x < 0.0) || sum <= 0.0 {
        return Err(StyleError::Zero);
    }
    w.iter_mut().for_each(|x| *x /= sum);
    Ok(w)
}

fn check(index: i64, count: usize) -> Result<usize, StyleError> {
    if index < 0 || index as usize >= count {
        return Err(StyleError::OutOfRange {
            got: index,
            max: count.saturating_sub(1),
        });
    }
    Ok(index as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_sets_one_weight() {
        let w = single(7, 26).unwrap();
        assert_eq!(w.len(), 26);
        assert_eq!(w[7], 1.0);
        assert_eq!(w.iter().sum::<f32>(), 1.0);
    }

    #[test]
    fn mix_normalises() {
        let w = mix("3:1, 7:3", 26).unwrap();
        assert!((w[3] - 0.25).abs() < 1e-6 && (w[7] - 0.75).abs() < 1e-6);
        let w = mix("2", 26).unwrap();
        assert_eq!(w[2], 1.0);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert_eq!(
            single(26, 26),
            Err(StyleError::OutOfRange { got: 26, max: 25 })
        );
        assert!(matches!(mix("3:x", 26), Err(StyleError::BadMix { .. })));
        assert!(matches!(mix("", 26), Err(StyleError::BadMix { .. })));
        assert_eq!(mix("3:0", 26), Err(StyleError::Zero));
        assert_eq!(mix("3:-1", 26), Err(StyleError::Zero));
        assert!(mix("40:1", 26)
            .unwrap_err()
            .to_string()
            .contains("0 to 25, got 40"));
    }
}
