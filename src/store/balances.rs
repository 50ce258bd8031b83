//! Many balances in one statement, for coalesced reads.

use std::collections::HashMap;

use sqlx::Row as _;

use super::{balance_from_row, Store};
use crate::domain::Balance;
use crate::error::LedgerError;

impl Store {
    /// The account rows of `users` (those that exist), each with whether something of it is due
    /// (then its figures must be settled before they are shown: see `balance`).
    pub async fn balances(
        &self,
        users: &[&str],
    ) -> Result<HashMap<String, (Balance, bool)>, LedgerError> {
        let mut conn = self.read_connection().await?;
        let rows = sqlx::query(super::BALANCES_SQL)
            .bind(users)
            .bind(self.clock().offset_micros())
            .fetch_all(&mut *conn.conn)
            .await
            .map_err(|e| self.saw(e))?;
        conn.finish();
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let user: String = row.try_get("user_id")?;
            let due: bool = row.try_get("due")?;
            found.insert(user, (balance_from_row(&row)?, due));
        }
        Ok(found)
    }
}
