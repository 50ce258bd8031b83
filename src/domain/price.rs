//! Model prices: a model's rates per token class, its long-context tiers, and what one AI call
//! costs under them. Pure arithmetic, exact: rates are integers in product tokens per million
//! tokens (a rational with denominator 10^6), sums are taken in `i128`, and the one rounding,
//! up, happens once per call.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{IdempotencyKey, FINGERPRINT_LEN, LABEL_LEN_MAX, TOKENS_MAX};
use crate::error::LedgerError;

/// Tokens of each class one rate counts, per million.
pub const PRICE_UNIT: i128 = 1_000_000;
/// Largest rate, in product tokens per million tokens: a million tokens of any class may cost at
/// most the largest write.
pub const RATE_PER_MILLION_MAX: i64 = TOKENS_MAX;
/// Most long-context tiers of one price.
pub const TIERS_MAX: usize = 8;

/// Product tokens per million tokens of each class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    /// Prompt tokens neither read from nor written to the cache.
    pub input: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    /// Output tokens, reasoning included.
    pub output: i64,
}

/// Rates that replace the base rates, for every class, of a call whose prompt is longer than
/// `above_input_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub above_input_tokens: i64,
    pub rates: Rates,
}

/// One version of one model's price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    pub price_id: i64,
    pub model: String,
    pub effective_from: DateTime<Utc>,
    pub rates: Rates,
    /// In increasing `above_input_tokens`.
    pub tiers: Vec<Tier>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// The token counts of one AI call, as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// Every prompt token, cached ones included.
    pub input: i64,
    /// Of `input`, read from the cache.
    pub cache_read: i64,
    /// Of `input`, written to the cache.
    pub cache_write: i64,
    pub output: i64,
}

impl ModelPrice {
    /// The rates that apply to a call with `input_tokens` of prompt: the highest tier it
    /// exceeds, else the base rates.
    pub fn rates_for(&self, input_tokens: i64) -> &Rates {
        self.tiers
            .iter()
            .rev()
            .find(|t| input_tokens > t.above_input_tokens)
            .map_or(&self.rates, |t| &t.rates)
    }

    /// What the call costs, in product tokens, rounded up. The counts were validated
    /// (`cache_read + cache_write <= input`, each `0..=TOKENS_MAX`) when the request was built.
    pub fn cost(&self, counts: &TokenCounts) -> Result<i64, LedgerError> {
        let r = self.rates_for(counts.input);
        let uncached = counts.input - counts.cache_read - counts.cache_write;
        let scaled = i128::from(uncached) * i128::from(r.input)
            + i128::from(counts.cache_read) * i128::from(r.cache_read)
            + i128::from(counts.cache_write) * i128::from(r.cache_write)
            + i128::from(counts.output) * i128::from(r.output);
        // Ceiling division of a non-negative sum (every term is).
        let tokens = (scaled + PRICE_UNIT - 1) / PRICE_UNIT;
        match i64::try_from(tokens) {
            Ok(t) if t <= TOKENS_MAX => Ok(t),
            _ => Err(LedgerError::invalid(
                "tokens",
                format!(
                    "the call costs {tokens} tokens under price {} of {}, more than the {TOKENS_MAX} one write may move",
                    self.price_id, self.model
                ),
            )),
        }
    }
}

/// A validated SetModelPrice request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPrice {
    pub model: String,
    pub rates: Rates,
    pub tiers: Vec<Tier>,
    /// `None`: now.
    pub effective_from: Option<DateTime<Utc>>,
    pub idempotency_key: IdempotencyKey,
}

impl NewPrice {
    /// Checks every field, naming each that is wrong.
    pub fn parse(
        model: String,
        rates: Option<Rates>,
        tiers: Vec<Tier>,
        effective_from: Option<DateTime<Utc>>,
        idempotency_key: String,
    ) -> Result<Self, LedgerError> {
        let mut violations = Vec::new();
        let mut bad = |field: &'static str, reason: String| {
            violations.push(crate::error::FieldViolation {
                field,
                reason: reason.into(),
            })
        };
        let model_chars = model.chars().count();
        if model.trim().is_empty() || model_chars > LABEL_LEN_MAX || model.trim() != model {
            bad(
                "model",
                format!("must be 1 to {LABEL_LEN_MAX} characters without surrounding whitespace"),
            );
        } else if model.chars().any(char::is_control) {
            bad("model", "must not contain control characters".into());
        }
        match &rates {
            None => bad("rates", "are required".into()),
            Some(r) if !rates_in_range(r) => bad(
                "rates",
                format!("must each be between 0 and {RATE_PER_MILLION_MAX} tokens per million"),
            ),
            Some(_) => {}
        }
        if tiers.len() > TIERS_MAX {
            bad("tiers", format!("at most {TIERS_MAX}, got {}", tiers.len()));
        } else if !tiers.iter().all(|t| rates_in_range(&t.rates))
            || !tiers
                .iter()
                .all(|t| (1..=TOKENS_MAX).contains(&t.above_input_tokens))
            || !tiers
                .windows(2)
                .all(|w| w[0].above_input_tokens < w[1].above_input_tokens)
        {
            bad(
                "tiers",
                format!(
                    "need strictly increasing above_input_tokens between 1 and {TOKENS_MAX}, and rates between 0 and {RATE_PER_MILLION_MAX}"
                ),
            );
        }
        let key = match IdempotencyKey::parse(idempotency_key) {
            Ok(k) => Some(k),
            Err(LedgerError::InvalidArgument { violations: v }) => {
                violations.extend(v);
                None
            }
            Err(e) => return Err(e),
        };
        if !violations.is_empty() {
            return Err(LedgerError::InvalidArgument { violations });
        }
        match (rates, key) {
            (Some(rates), Some(idempotency_key)) => Ok(Self {
                model,
                rates,
                tiers,
                effective_from,
                idempotency_key,
            }),
            _ => Err(LedgerError::Invariant(
                "a price lost a field without recording why".into(),
            )),
        }
    }

    /// What a retry must repeat: every field but the key (an unset `effective_from` stays
    /// unset, so a retry of "from now" is a replay however late it comes).
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        let mut h = Sha256::new();
        h.update(self.model.as_bytes());
        h.update([0]);
        for r in std::iter::once(&self.rates).chain(self.tiers.iter().map(|t| &t.rates)) {
            for v in [r.input, r.cache_read, r.cache_write, r.output] {
                h.update(v.to_le_bytes());
            }
        }
        for t in &self.tiers {
            h.update(t.above_input_tokens.to_le_bytes());
        }
        h.update(self.tiers.len().to_le_bytes());
        match self.effective_from {
            Some(at) => h.update(at.timestamp_micros().to_le_bytes()),
            None => h.update(b"now"),
        }
        let digest = h.finalize();
        let mut out = [0u8; FINGERPRINT_LEN];
        out.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        out
    }
}

fn rates_in_range(r: &Rates) -> bool {
    [r.input, r.cache_read, r.cache_write, r.output]
        .iter()
        .all(|v| (0..=RATE_PER_MILLION_MAX).contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(rates: Rates, tiers: Vec<Tier>) -> ModelPrice {
        ModelPrice {
            price_id: 1,
            model: "m".into(),
            effective_from: DateTime::UNIX_EPOCH,
            rates,
            tiers,
            created_by: "t".into(),
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    const RATES: Rates = Rates {
        input: 3_000_000,
        cache_read: 300_000,
        cache_write: 3_750_000,
        output: 15_000_000,
    };

    #[test]
    fn cached_tokens_are_billed_at_the_cache_rates_not_the_input_rate() {
        let p = price(RATES, vec![]);
        // 10,000 prompt tokens of which 8,000 cache reads and 1,000 cache writes, 500 output:
        // 1,000 × 3 + 8,000 × 0.3 + 1,000 × 3.75 + 500 × 15 = 3,000 + 2,400 + 3,750 + 7,500.
        let counts = TokenCounts {
            input: 10_000,
            cache_read: 8_000,
            cache_write: 1_000,
            output: 500,
        };
        assert_eq!(p.cost(&counts).unwrap(), 16_650);
        // Billing the cached tokens at the input rate would have charged 37,500.
        let all_input = TokenCounts {
            cache_read: 0,
            cache_write: 0,
            ..counts
        };
        assert_eq!(p.cost(&all_input).unwrap(), 37_500);
    }

    #[test]
    fn cache_writes_are_charged_not_dropped() {
        let p = price(RATES, vec![]);
        let only_writes = TokenCounts {
            input: 1_000,
            cache_write: 1_000,
            ..Default::default()
        };
        assert_eq!(p.cost(&only_writes).unwrap(), 3_750);
    }

    #[test]
    fn a_long_prompt_is_priced_by_its_tier_for_every_class() {
        let long = Rates {
            input: 6_000_000,
            cache_read: 600_000,
            cache_write: 7_500_000,
            output: 22_500_000,
        };
        let p = price(
            RATES,
            vec![Tier {
                above_input_tokens: 200_000,
                rates: long,
            }],
        );
        let at = |input| TokenCounts {
            input,
            output: 1_000,
            ..Default::default()
        };
        // Exactly at the threshold: base rates; one token over: the tier's, for output too.
        assert_eq!(p.cost(&at(200_000)).unwrap(), 600_000 + 15_000);
        assert_eq!(p.cost(&at(200_001)).unwrap(), 1_200_006 + 22_500);
    }

    #[test]
    fn the_highest_tier_exceeded_applies() {
        let r = |input| Rates {
            input,
            ..Default::default()
        };
        let p = price(
            r(1_000_000),
            vec![
                Tier {
                    above_input_tokens: 10,
                    rates: r(2_000_000),
                },
                Tier {
                    above_input_tokens: 100,
                    rates: r(3_000_000),
                },
            ],
        );
        let cost = |input| {
            p.cost(&TokenCounts {
                input,
                ..Default::default()
            })
            .unwrap()
        };
        assert_eq!(
            (cost(10), cost(11), cost(100), cost(101)),
            (10, 22, 200, 303)
        );
    }

    #[test]
    fn a_fraction_of_a_token_rounds_up_once_per_call() {
        // 0.3 tokens per token read from cache, 1 token of output at 1.5: 3 × 0.3 + 1.5 = 2.4 → 3.
        let p = price(
            Rates {
                cache_read: 300_000,
                output: 1_500_000,
                ..Default::default()
            },
            vec![],
        );
        let counts = TokenCounts {
            input: 3,
            cache_read: 3,
            output: 1,
            ..Default::default()
        };
        assert_eq!(p.cost(&counts).unwrap(), 3);
        assert_eq!(p.cost(&TokenCounts::default()).unwrap(), 0);
    }

    #[test]
    fn the_largest_counts_and_rates_do_not_overflow_and_are_refused_past_the_write_limit() {
        let max = Rates {
            input: RATE_PER_MILLION_MAX,
            cache_read: RATE_PER_MILLION_MAX,
            cache_write: RATE_PER_MILLION_MAX,
            output: RATE_PER_MILLION_MAX,
        };
        let counts = TokenCounts {
            input: TOKENS_MAX,
            output: TOKENS_MAX,
            ..Default::default()
        };
        assert!(price(max, vec![]).cost(&counts).is_err());
        let one = TokenCounts {
            input: 1_000_000,
            ..Default::default()
        };
        assert_eq!(price(max, vec![]).cost(&one).unwrap(), TOKENS_MAX);
    }

    #[test]
    fn a_price_request_names_every_bad_field() {
        let bad_tier = Tier {
            above_input_tokens: 0,
            rates: RATES,
        };
        let err = NewPrice::parse(
            " ".into(),
            Some(Rates { input: -1, ..RATES }),
            vec![bad_tier],
            None,
            String::new(),
        )
        .unwrap_err();
        let LedgerError::InvalidArgument { violations } = err else {
            panic!("{err:?}")
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["model", "rates", "tiers", "idempotency_key"]);
        assert!(NewPrice::parse("m".into(), None, vec![], None, "k".into()).is_err());
        let unordered = vec![
            Tier {
                above_input_tokens: 100,
                rates: RATES,
            },
            Tier {
                above_input_tokens: 100,
                rates: RATES,
            },
        ];
        assert!(NewPrice::parse("m".into(), Some(RATES), unordered, None, "k".into()).is_err());
        assert!(NewPrice::parse("m".into(), Some(RATES), vec![], None, "k".into()).is_ok());
    }
}
