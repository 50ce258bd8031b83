//! The product catalog: which Stripe prices (by id or lookup key) buy which tokens, and how they
//! are credited. Loaded from a TOML file (see `catalog.example.toml`). Also the one place that
//! decides which product an event pays for (`for_checkout`, `for_invoice`): pure, no I/O.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use chrono::Duration;
use serde::Deserialize;

use super::event::{CheckoutSession, Invoice, InvoiceLine};
use crate::domain::{RolloverPolicy, PRIORITY_MAX, PRIORITY_MIN, TOKENS_MAX};

/// The built-in example catalog, used when no catalog file is configured.
pub const EXAMPLE_CATALOG: &str = include_str!("../../catalog.example.toml");

/// How a product's tokens are credited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductKind {
    /// A yearly subscription: its tokens are granted at once for each paid invoice.
    Annual,
    /// A 28-day subscription: its tokens are dripped for each paid cycle.
    Drip,
    /// A one-off token pack.
    Pack,
}

/// Longest accepted `grace`. Past a month it is no grace but a second allotment: a 28-day
/// cycle's tokens would outlive the next cycle.
pub const GRACE_MAX: Duration = Duration::days(31);

/// When a product's tokens expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expires {
    /// Never (`expires = "never"`, the default).
    #[default]
    Never,
    /// At the end of the period the payment is for (a drip's cycle, an annual invoice's year),
    /// plus `grace` (`expires = "period_end"`).
    PeriodEnd { grace: Duration },
}

/// One product, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// The catalog name, also accepted as `metadata.pack` / `metadata.product` on a checkout.
    pub name: String,
    pub kind: ProductKind,
    /// Tokens per purchase, per year (annual) or per cycle (drip).
    pub tokens: i64,
    pub price_ids: Vec<String>,
    pub lookup_keys: Vec<String>,
    /// The price in cents. Only used to recognise a product when an event names no price id,
    /// lookup key or product (and only when exactly one product of the right kinds has it).
    pub amount_cents: Option<i64>,
    /// When its tokens expire. Never for a pack (it pays for no period).
    pub expires: Expires,
    /// Burn order of its tokens among the user's others: lower burns first.
    pub priority: i32,
    /// Drips only: what the previous cycle carries into the one a paid renewal starts. `None`:
    /// previous cycles run to their own expiry.
    pub rollover: Option<RolloverPolicy>,
}

/// A `[[product]]` as written. Numbers are read wide and strings loosely, so that an
/// out-of-range or misspelt value is refused by `Product::check` with a message naming the
/// product and the key, not by the TOML parser.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductEntry {
    name: String,
    kind: ProductKind,
    tokens: i64,
    #[serde(default)]
    price_ids: Vec<String>,
    #[serde(default)]
    lookup_keys: Vec<String>,
    #[serde(default)]
    amount_cents: Option<i64>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    grace: Option<String>,
    #[serde(default)]
    rollover_max: Option<i64>,
    #[serde(default)]
    rollover_max_percent: Option<i64>,
    #[serde(default)]
    priority: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(rename = "product")]
    products: Vec<ProductEntry>,
}

impl Product {
    /// Checks one entry; the error names the key (the caller adds the product).
    fn check(e: ProductEntry) -> Result<Self, String> {
        if !(1..=TOKENS_MAX).contains(&e.tokens) {
            return Err(format!("tokens must be between 1 and {TOKENS_MAX}"));
        }
        let period_end = match e.expires.as_deref() {
            None | Some("never") => false,
            Some("period_end") if e.kind == ProductKind::Pack => {
                return Err(
                    "expires = \"period_end\" is for subscriptions (kind \"drip\" or \"annual\"): a pack pays for no period".into(),
                )
            }
            Some("period_end") => true,
            Some(other) => {
                return Err(format!(
                    "expires = {other:?}: must be \"never\" or \"period_end\""
                ))
            }
        };
        let expires =
            match (period_end, e.grace.as_deref()) {
                (false, None) => Expires::Never,
                (false, Some(_)) => return Err(
                    "grace needs expires = \"period_end\" (tokens that never expire need no grace)"
                        .into(),
                ),
                (true, grace) => Expires::PeriodEnd {
                    grace: grace.map_or(Ok(Duration::zero()), parse_grace)?,
                },
            };
        let rollover = match (e.rollover_max, e.rollover_max_percent) {
            (None, None) => None,
            (max, pct) => {
                let key = if max.is_some() {
                    "rollover_max"
                } else {
                    "rollover_max_percent"
                };
                if e.kind != ProductKind::Drip {
                    return Err(format!(
                        "{key} is only for kind = \"drip\": a rollover carries one 28-day cycle into the next"
                    ));
                }
                // The carried tokens expire with the new cycle; with no expiry they would never
                // expire (a rollover lot is not rolled over again) and pile up cycle after cycle.
                if !period_end {
                    return Err(format!(
                        "{key} needs expires = \"period_end\": carried tokens expire with the new cycle, so without an expiry they would never expire"
                    ));
                }
                if let Some(max) = max.filter(|m| !(0..=TOKENS_MAX).contains(m)) {
                    return Err(format!(
                        "rollover_max = {max}: must be between 0 and {TOKENS_MAX} tokens"
                    ));
                }
                if let Some(pct) = pct.filter(|p| !(0..=100).contains(p)) {
                    return Err(format!(
                        "rollover_max_percent = {pct}: must be between 0 and 100"
                    ));
                }
                Some(RolloverPolicy {
                    max_tokens: max,
                    // In 0..=100: checked just above.
                    max_percent: pct.map(|p| p as u32),
                })
            }
        };
        let priority = e.priority.unwrap_or(0);
        let priority = i32::try_from(priority)
            .ok()
            .filter(|p| (PRIORITY_MIN..=PRIORITY_MAX).contains(p))
            .ok_or_else(|| {
                format!(
                    "priority = {priority}: must be between {PRIORITY_MIN} and {PRIORITY_MAX} (lower burns first)"
                )
            })?;
        Ok(Self {
            name: e.name,
            kind: e.kind,
            tokens: e.tokens,
            price_ids: e.price_ids,
            lookup_keys: e.lookup_keys,
            amount_cents: e.amount_cents,
            expires,
            priority,
            rollover,
        })
    }
}

/// A `grace` value: a whole number and one unit, `d` (days), `h` (hours) or `m` (minutes), at
/// most `GRACE_MAX`. One unit, no fractions: `"36h"`, not `"1d12h"` or `"1.5d"`.
fn parse_grace(text: &str) -> Result<Duration, String> {
    let malformed = || {
        format!(
            "grace = {text:?}: expected a whole number of days, hours or minutes, like \"3d\", \"12h\" or \"30m\""
        )
    };
    let Some(unit) = text.chars().last() else {
        return Err(malformed());
    };
    let number = &text[..text.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let n: i64 = number.parse().map_err(|_| malformed())?;
    let grace = match unit {
        'd' => Duration::try_days(n),
        'h' => Duration::try_hours(n),
        'm' => Duration::try_minutes(n),
        _ => return Err(malformed()),
    };
    match grace {
        Some(g) if g <= GRACE_MAX => Ok(g),
        _ => Err(format!(
            "grace = {text:?}: must be at most {} days",
            GRACE_MAX.num_days()
        )),
    }
}

/// Products indexed by price id, lookup key and name.
#[derive(Debug, Clone)]
pub struct Catalog {
    products: Vec<Product>,
    by_key: HashMap<String, usize>,
}

impl Catalog {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the product catalog {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the product catalog {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: CatalogFile = toml::from_str(text)?;
        let products = file
            .products
            .into_iter()
            .map(|e| {
                let name = e.name.clone();
                Product::check(e).map_err(|why| anyhow!("product {name:?}: {why}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut by_key = HashMap::new();
        for (i, p) in products.iter().enumerate() {
            let keys = std::iter::once(&p.name)
                .chain(&p.price_ids)
                .chain(&p.lookup_keys);
            for key in keys {
                // One namespace for names, price ids and lookup keys; a product may repeat its
                // own key (its name as its lookup key, say), never another product's.
                if let Some(other) = by_key.insert(key.clone(), i).filter(|other| *other != i) {
                    bail!(
                        "{key:?} names two products: {:?} and {:?}",
                        products[other].name,
                        p.name
                    );
                }
            }
        }
        Ok(Self { products, by_key })
    }

    /// The product a price id, lookup key or catalog name stands for.
    pub fn resolve(&self, key: &str) -> Option<&Product> {
        self.by_key.get(key).map(|&i| &self.products[i])
    }

    /// The only product of one of `kinds` priced `amount_cents`, if exactly one is.
    pub fn resolve_by_amount(&self, amount_cents: i64, kinds: &[ProductKind]) -> Option<&Product> {
        let mut matching = self
            .products
            .iter()
            .filter(|p| kinds.contains(&p.kind) && p.amount_cents == Some(amount_cents));
        let first = matching.next()?;
        matching.next().is_none().then_some(first)
    }

    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// The product the first known one of `keys` names.
    pub fn resolve_first(&self, keys: &[String]) -> Option<&Product> {
        keys.iter().find_map(|k| self.resolve(k))
    }

    /// The product a checkout session buys: the first of its product keys the catalog knows;
    /// only when the session names no product at all, the one product of `kinds` with its price
    /// before discounts (a named but unknown product is a catalog gap, never guessed at). The
    /// caller checks the product's kind against the session's mode.
    pub fn for_checkout(
        &self,
        session: &CheckoutSession,
        kinds: &[ProductKind],
    ) -> Option<&Product> {
        self.resolve_first(&session.product_keys).or_else(|| {
            session
                .amount_subtotal
                .or(session.amount_total)
                .filter(|_| session.product_keys.is_empty())
                .and_then(|a| self.resolve_by_amount(a, kinds))
        })
    }

    /// The product a subscription invoice pays for, and the line that pays it (whose period a
    /// drip cycle uses). Proration lines never decide. A line's price id or lookup key comes
    /// first, the plan's line before one-off items on the same invoice; then `metadata.product`;
    /// last, when nothing on the invoice names a price or product, the one subscription product
    /// with the first line's (or the invoice's) amount.
    pub fn for_invoice<'a>(
        &'a self,
        inv: &'a Invoice,
    ) -> Option<(&'a Product, Option<&'a InvoiceLine>)> {
        let lines: Vec<&InvoiceLine> = inv.lines.iter().filter(|l| !l.proration).collect();
        if let Some(by_line) = self.plan_line(&lines) {
            return Some(by_line);
        }
        let product = self
            .resolve_first(&inv.product_keys)
            .or_else(|| self.invoice_by_amount(inv, &lines))?;
        Some((product, lines.first().copied()))
    }

    /// The product of the first line naming a subscription product, else of the first line
    /// naming any known product.
    fn plan_line<'a>(
        &'a self,
        lines: &[&'a InvoiceLine],
    ) -> Option<(&'a Product, Option<&'a InvoiceLine>)> {
        let resolved: Vec<(&Product, &InvoiceLine)> = lines
            .iter()
            .filter_map(|l| {
                [l.price_id.as_deref(), l.lookup_key.as_deref()]
                    .into_iter()
                    .flatten()
                    .find_map(|k| self.resolve(k))
                    .map(|p| (p, *l))
            })
            .collect();
        resolved
            .iter()
            .find(|(p, _)| p.kind != ProductKind::Pack)
            .or_else(|| resolved.first())
            .map(|(p, l)| (*p, Some(*l)))
    }

    /// Last resort for an invoice that names no price and no product: a subscription product
    /// with exactly its amount.
    fn invoice_by_amount(&self, inv: &Invoice, lines: &[&InvoiceLine]) -> Option<&Product> {
        let names_a_price = inv
            .lines
            .iter()
            .any(|l| l.price_id.is_some() || l.lookup_key.is_some());
        if names_a_price || !inv.product_keys.is_empty() {
            return None;
        }
        lines
            .first()
            .and_then(|l| l.amount)
            .or(inv.amount_paid)
            .and_then(|a| self.resolve_by_amount(a, &[ProductKind::Annual, ProductKind::Drip]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_catalog_holds_the_products_of_the_seed() {
        let c = Catalog::parse(EXAMPLE_CATALOG).unwrap();
        let annual = c.resolve("vision_pro_annual").unwrap();
        assert_eq!(
            (annual.kind, annual.tokens),
            (ProductKind::Annual, 5_000_000)
        );
        let drip = c.resolve("vision_pro_28day").unwrap();
        assert_eq!((drip.kind, drip.tokens), (ProductKind::Drip, 375_000));
        for (name, tokens) in [
            ("pack_2m", 2_000_000),
            ("pack_5m", 5_000_000),
            ("pack_12m", 12_000_000),
        ] {
            let p = c.resolve(name).unwrap();
            assert_eq!((p.kind, p.tokens), (ProductKind::Pack, tokens));
            for price in &p.price_ids {
                assert_eq!(c.resolve(price).unwrap().name, name);
            }
        }
    }

    #[test]
    fn a_product_may_use_its_name_as_its_lookup_key() {
        let text = r#"
            [[product]]
            name = "pack_2m"
            kind = "pack"
            tokens = 2000000
            lookup_keys = ["pack_2m"]
        "#;
        assert_eq!(
            Catalog::parse(text)
                .unwrap()
                .resolve("pack_2m")
                .unwrap()
                .tokens,
            2_000_000
        );
    }

    /// The catalog of one product of `kind` with `extra` keys.
    fn one(kind: &str, extra: &str) -> anyhow::Result<Product> {
        let text = format!("[[product]]\nname = \"p\"\nkind = \"{kind}\"\ntokens = 100\n{extra}\n");
        Catalog::parse(&text).map(|c| c.products()[0].clone())
    }

    fn refusal(kind: &str, extra: &str) -> String {
        format!("{:#}", one(kind, extra).unwrap_err())
    }

    #[test]
    fn the_example_catalog_expires_nothing_and_rolls_nothing_over() {
        let c = Catalog::parse(EXAMPLE_CATALOG).unwrap();
        for p in c.products() {
            assert_eq!(
                (p.expires, p.priority, p.rollover),
                (Expires::Never, 0, None),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn the_example_catalogs_commented_out_terms_load() {
        // What the example shows, commented out, for the 28-day plan: uncommented, it loads.
        let text = EXAMPLE_CATALOG
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| {
                        rest.split_once(" = ").is_some_and(|(key, _)| {
                            !key.is_empty()
                                && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        })
                    })
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Catalog::parse(&text).unwrap();
        let drip = c.resolve("vision_pro_28day").unwrap();
        assert_eq!(
            drip.expires,
            Expires::PeriodEnd {
                grace: Duration::days(1)
            }
        );
        assert_eq!(
            drip.rollover,
            Some(RolloverPolicy {
                max_tokens: None,
                max_percent: Some(100)
            })
        );
    }

    #[test]
    fn a_drip_may_expire_at_its_period_end_with_grace_and_rollover() {
        let p = one(
            "drip",
            "expires = \"period_end\"\ngrace = \"12h\"\nrollover_max = 50_000\nrollover_max_percent = 50\npriority = -10",
        )
        .unwrap();
        assert_eq!(
            p.expires,
            Expires::PeriodEnd {
                grace: Duration::hours(12)
            }
        );
        assert_eq!(
            p.rollover,
            Some(RolloverPolicy {
                max_tokens: Some(50_000),
                max_percent: Some(50)
            })
        );
        assert_eq!(p.priority, -10);
        let annual = one("annual", "expires = \"period_end\"").unwrap();
        assert_eq!(
            annual.expires,
            Expires::PeriodEnd {
                grace: Duration::zero()
            },
            "no grace: at the period end"
        );
        assert_eq!(annual.rollover, None);
        assert_eq!(
            one("pack", "expires = \"never\"\npriority = 1000")
                .unwrap()
                .expires,
            Expires::Never
        );
    }

    #[test]
    fn grace_is_a_whole_number_of_days_hours_or_minutes_up_to_the_limit() {
        for (text, grace) in [
            ("0d", Duration::zero()),
            ("3d", Duration::days(3)),
            ("12h", Duration::hours(12)),
            ("30m", Duration::minutes(30)),
            ("31d", GRACE_MAX),
            ("744h", GRACE_MAX),
        ] {
            assert_eq!(parse_grace(text), Ok(grace), "{text}");
        }
        for text in [
            "",
            "d",
            "3",
            "3s",
            "3 d",
            " 3d",
            "-3d",
            "+3d",
            "1.5d",
            "1d12h",
            "3D",
            "3dé",
            "é",
            "99999999999999999999d",
        ] {
            assert!(
                parse_grace(text)
                    .unwrap_err()
                    .contains("expected a whole number"),
                "{text:?}"
            );
        }
        for text in ["32d", "745h", "44641m", "9223372036854775807d"] {
            assert!(
                parse_grace(text).unwrap_err().contains("at most 31 days"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn terms_that_do_not_fit_the_product_are_refused_naming_the_product_and_key() {
        for (kind, extra, says) in [
            (
                "pack",
                "expires = \"period_end\"",
                "expires = \"period_end\" is for subscriptions",
            ),
            (
                "drip",
                "expires = \"cycle_end\"",
                "expires = \"cycle_end\": must be",
            ),
            (
                "drip",
                "grace = \"1d\"",
                "grace needs expires = \"period_end\"",
            ),
            (
                "drip",
                "expires = \"never\"\ngrace = \"1d\"",
                "grace needs expires",
            ),
            (
                "drip",
                "expires = \"period_end\"\ngrace = \"1w\"",
                "grace = \"1w\": expected",
            ),
            (
                "drip",
                "expires = \"period_end\"\ngrace = \"40d\"",
                "grace = \"40d\": must be at most 31 days",
            ),
            (
                "annual",
                "expires = \"period_end\"\nrollover_max = 1",
                "rollover_max is only for kind = \"drip\"",
            ),
            (
                "pack",
                "rollover_max_percent = 50",
                "rollover_max_percent is only for kind = \"drip\"",
            ),
            (
                "drip",
                "rollover_max_percent = 50",
                "rollover_max_percent needs expires = \"period_end\"",
            ),
            (
                "drip",
                "expires = \"period_end\"\nrollover_max = -1",
                "rollover_max = -1: must be between 0 and",
            ),
            (
                "drip",
                "expires = \"period_end\"\nrollover_max_percent = 101",
                "rollover_max_percent = 101: must be between 0 and 100",
            ),
            (
                "drip",
                "expires = \"period_end\"\nrollover_max_percent = -1",
                "rollover_max_percent = -1",
            ),
            (
                "drip",
                "priority = 1001",
                "priority = 1001: must be between -1000 and 1000",
            ),
            ("pack", "priority = -1001", "priority = -1001"),
            ("pack", "priority = 9999999999", "priority = 9999999999"),
        ] {
            let error = refusal(kind, extra);
            assert!(
                error.starts_with("product \"p\": ") && error.contains(says),
                "{kind} with {extra:?}: {error}"
            );
        }
    }

    #[test]
    fn the_limits_of_each_term_are_accepted() {
        let p = one(
            "drip",
            "expires = \"period_end\"\nrollover_max = 0\nrollover_max_percent = 100\npriority = -1000",
        )
        .unwrap();
        assert_eq!(
            (p.rollover, p.priority),
            (
                Some(RolloverPolicy {
                    max_tokens: Some(0),
                    max_percent: Some(100)
                }),
                -1000
            )
        );
        let p = one(
            "drip",
            &format!(
                "expires = \"period_end\"\nrollover_max = {TOKENS_MAX}\nrollover_max_percent = 0"
            ),
        )
        .unwrap();
        assert_eq!(p.rollover.unwrap().max_tokens, Some(TOKENS_MAX));
        assert!(refusal(
            "drip",
            &format!(
                "expires = \"period_end\"\nrollover_max = {}",
                TOKENS_MAX + 1
            )
        )
        .contains("rollover_max"));
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let error = refusal("drip", "expires = \"period_end\"\nrollover_percent = 50");
        assert!(
            error.contains("unknown field `rollover_percent`"),
            "{error}"
        );
    }

    fn line(price: Option<&str>, amount: i64, proration: bool) -> InvoiceLine {
        InvoiceLine {
            amount: Some(amount),
            price_id: price.map(str::to_owned),
            lookup_key: None,
            period_start: Some(10),
            period_end: Some(20),
            proration,
        }
    }

    fn invoice(lines: Vec<InvoiceLine>, product_keys: &[&str]) -> Invoice {
        Invoice {
            id: "in_1".into(),
            billing_reason: "subscription_cycle".into(),
            subscription: Some("sub_1".into()),
            customer: None,
            users: Vec::new(),
            product_keys: product_keys.iter().map(|k| k.to_string()).collect(),
            lines,
            lines_has_more: false,
            amount_paid: None,
            currency: None,
        }
    }

    #[test]
    fn an_invoice_is_paid_for_by_its_plans_line_before_a_one_off_item() {
        let c = Catalog::parse(EXAMPLE_CATALOG).unwrap();
        let inv = invoice(
            vec![
                line(Some("price_pack_2m"), 9_900, false),
                line(Some("price_vision_pro_28day"), 9_900, false),
            ],
            &[],
        );
        let (product, paid_by) = c.for_invoice(&inv).unwrap();
        assert_eq!(product.name, "vision_pro_28day");
        assert_eq!(paid_by, Some(&inv.lines[1]));
    }

    #[test]
    fn an_invoice_is_matched_by_amount_only_when_it_names_nothing() {
        let c = Catalog::parse(EXAMPLE_CATALOG).unwrap();
        // $99 is a pack's price too, but only one subscription product has it.
        let bare = invoice(vec![line(None, 9_900, false)], &[]);
        assert_eq!(c.for_invoice(&bare).unwrap().0.name, "vision_pro_28day");
        let unknown_price = invoice(vec![line(Some("price_elsewhere"), 9_900, false)], &[]);
        assert!(c.for_invoice(&unknown_price).is_none());
        let named = invoice(vec![line(None, 9_900, false)], &["vision_pro_annual"]);
        assert_eq!(c.for_invoice(&named).unwrap().0.name, "vision_pro_annual");
        let only_proration = invoice(vec![line(Some("price_vision_pro_28day"), 1, true)], &[]);
        assert!(c.for_invoice(&only_proration).is_none());
    }

    #[test]
    fn a_checkout_naming_no_product_is_matched_by_its_price_of_the_right_kind() {
        let c = Catalog::parse(EXAMPLE_CATALOG).unwrap();
        let mut session = crate::webhook::event::checkout_session(&serde_json::json!({
            "id": "cs_1", "amount_subtotal": 9_900, "amount_total": 5_000
        }))
        .unwrap();
        assert_eq!(
            c.for_checkout(&session, &[ProductKind::Pack]).unwrap().name,
            "pack_2m"
        );
        assert_eq!(
            c.for_checkout(&session, &[ProductKind::Annual, ProductKind::Drip])
                .unwrap()
                .name,
            "vision_pro_28day"
        );
        session.product_keys = vec!["no_such_pack".into()];
        assert!(c.for_checkout(&session, &[ProductKind::Pack]).is_none());
    }

    #[test]
    fn a_key_naming_two_products_is_refused() {
        let text = r#"
            [[product]]
            name = "a"
            kind = "pack"
            tokens = 1
            price_ids = ["price_x"]
            [[product]]
            name = "b"
            kind = "pack"
            tokens = 2
            price_ids = ["price_x"]
        "#;
        assert!(Catalog::parse(text).is_err());
    }
}
