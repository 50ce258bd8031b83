//! The product catalog: which Stripe prices (by id or lookup key) buy which tokens, and how they
//! are credited. Loaded from a TOML file (see `catalog.example.toml`). Also the one place that
//! decides which product an event pays for (`for_checkout`, `for_invoice`): pure, no I/O.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::event::{CheckoutSession, Invoice, InvoiceLine};
use crate::domain::TOKENS_MAX;

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

/// One product.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// The catalog name, also accepted as `metadata.pack` / `metadata.product` on a checkout.
    pub name: String,
    pub kind: ProductKind,
    /// Tokens per purchase, per year (annual) or per cycle (drip).
    pub tokens: i64,
    #[serde(default)]
    pub price_ids: Vec<String>,
    #[serde(default)]
    pub lookup_keys: Vec<String>,
    /// The price in cents. Only used to recognise a product when an event names no price id,
    /// lookup key or product (and only when exactly one product of the right kinds has it).
    #[serde(default)]
    pub amount_cents: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(rename = "product")]
    products: Vec<Product>,
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
        let mut by_key = HashMap::new();
        for (i, p) in file.products.iter().enumerate() {
            if !(1..=TOKENS_MAX).contains(&p.tokens) {
                bail!(
                    "product {:?}: tokens must be between 1 and {TOKENS_MAX}",
                    p.name
                );
            }
            let keys = std::iter::once(&p.name)
                .chain(&p.price_ids)
                .chain(&p.lookup_keys);
            for key in keys {
                // One namespace for names, price ids and lookup keys; a product may repeat its
                // own key (its name as its lookup key, say), never another product's.
                if let Some(other) = by_key.insert(key.clone(), i).filter(|other| *other != i) {
                    bail!(
                        "{key:?} names two products: {:?} and {:?}",
                        file.products[other].name,
                        p.name
                    );
                }
            }
        }
        Ok(Self {
            products: file.products,
            by_key,
        })
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
