//! Several data-modifying statements sent as one: each becomes common table expressions of a
//! single statement, so a batch's last writes (its usage rows and their rollups, its lots'
//! burns, its accounts' moves) cost one round trip instead of three.
//!
//! PostgreSQL runs every data-modifying CTE to completion whatever the outer query reads, all
//! of them on one snapshot. The parts joined here write different tables, and none reads what
//! another writes, so running them together changes nothing but the round trips. Constraint
//! checks (the usage rows' foreign key to their account) run when the whole statement ends, as
//! they ran at the end of each statement before.

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres};

/// A query being bound, argument by argument in placeholder order.
pub(super) type Bound<'q> = Query<'q, Postgres, PgArguments>;

type Binder<'a> = Box<dyn for<'q> FnOnce(Bound<'q>) -> Bound<'q> + Send + 'a>;

/// One statement's worth of CTEs, written with placeholders `$1…$args` as if alone.
pub(super) struct Part<'a> {
    /// `(name, body)`: each body a statement that may read the CTEs named before it.
    ctes: Vec<(&'static str, String)>,
    args: usize,
    bind: Binder<'a>,
}

impl<'a> Part<'a> {
    /// A part whose `ctes` use placeholders `$1…$args`, bound by `bind` in that order.
    pub fn new(
        ctes: Vec<(&'static str, String)>,
        args: usize,
        bind: impl for<'q> FnOnce(Bound<'q>) -> Bound<'q> + Send + 'a,
    ) -> Self {
        Self {
            ctes,
            args,
            bind: Box::new(bind),
        }
    }
}

/// Parts to run as one statement, and what it selects at the end (`SELECT 1` unless set).
#[derive(Default)]
pub(super) struct Joined<'a> {
    parts: Vec<Part<'a>>,
    /// A final SELECT with placeholders `$1…` numbered after every part's.
    select: Option<Part<'a>>,
}

impl<'a> Joined<'a> {
    pub fn push(&mut self, part: Option<Part<'a>>) {
        self.parts.extend(part);
    }

    /// The statement's own SELECT: its `ctes` hold one entry whose name is ignored.
    pub fn select(&mut self, select: Part<'a>) {
        self.select = Some(select);
    }

    /// Runs the parts (nothing to do without any) as one statement on `conn`.
    pub async fn execute(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.parts.is_empty() {
            return Ok(());
        }
        let mut sql = String::from("WITH ");
        let mut offset = 0;
        let mut first = true;
        for part in &self.parts {
            for (name, body) in &part.ctes {
                if !first {
                    sql.push_str(", ");
                }
                first = false;
                sql.push_str(name);
                sql.push_str(" AS (");
                sql.push_str(&renumber(body, offset));
                sql.push(')');
            }
            offset += part.args;
        }
        match &self.select {
            Some(select) => {
                sql.push(' ');
                for (_, body) in &select.ctes {
                    sql.push_str(&renumber(body, offset));
                }
            }
            None => sql.push_str(" SELECT 1"),
        }
        let mut query = sqlx::query(&sql);
        for part in self.parts.into_iter().chain(self.select) {
            query = (part.bind)(query);
        }
        query.execute(conn).await?;
        Ok(())
    }
}

/// `sql` with every placeholder `$n` made `$(n + offset)`.
fn renumber(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(&(_, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            digits.push(d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::renumber;

    #[test]
    fn placeholders_move_past_the_parts_before() {
        assert_eq!(
            renumber("unnest($1::bigint[], $12::text[]) WHERE x = $2", 20),
            "unnest($21::bigint[], $32::text[]) WHERE x = $22"
        );
        assert_eq!(renumber("SELECT $1", 0), "SELECT $1");
        assert_eq!(renumber("a $ b $x", 3), "a $ b $x");
    }
}
