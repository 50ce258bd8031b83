//! The product catalog: which Stripe prices (by id or lookup key) buy which tokens, and how they
//! are credited. Loaded from a TOML file (see `catalog.example.toml`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

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
