//! Model prices: SetModelPrice (admins) and ListModelPrices (the AI backend and dashboards).

use tonic::{Request, Response, Status};

use super::convert::{chrono_to_timestamp, timestamp_to_chrono};
use super::{method, Call, LedgerGrpc};
use crate::auth::Scope;
use crate::domain::{ModelPrice, NewPrice, Rates, Tier, LABEL_LEN_MAX};
use crate::error::LedgerError;
use crate::pb;

pub(super) async fn set_model_price(
    grpc: &LedgerGrpc,
    request: Request<pb::SetModelPriceRequest>,
) -> Result<Response<pb::SetModelPriceResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(
        grpc,
        method::SET_MODEL_PRICE,
        &request,
        "",
        &m.idempotency_key,
    );
    let pb::SetModelPriceRequest {
        model,
        rates,
        tiers,
        effective_from,
        idempotency_key,
    } = request.into_inner();
    call.run(async {
        let caller = call.authorize(&[])?;
        let effective_from = timestamp_to_chrono("effective_from", effective_from)?;
        let tiers = tiers
            .into_iter()
            .map(|t| Tier {
                above_input_tokens: t.above_input_tokens,
                rates: rates_from_pb(t.rates.unwrap_or_default()),
            })
            .collect();
        let price = NewPrice::parse(
            model,
            rates.map(rates_from_pb),
            tiers,
            effective_from,
            idempotency_key,
        )?;
        let (price, replayed) = call
            .ledger()
            .set_price(&price, caller.actor().as_str())
            .await?;
        tracing::info!(
            price_id = price.price_id,
            model = %price.model,
            effective_from = %price.effective_from,
            replayed,
            "model price set"
        );
        // In force now unless scheduled; a later version cannot have started yet (no version
        // starts in the past).
        let current = price.effective_from <= call.ledger().now();
        Ok(pb::SetModelPriceResponse {
            price: Some(price_to_pb(price, current)),
            replayed,
        })
    })
    .await
}

pub(super) async fn list_model_prices(
    grpc: &LedgerGrpc,
    request: Request<pb::ListModelPricesRequest>,
) -> Result<Response<pb::ListModelPricesResponse>, Status> {
    let call = Call::new(grpc, method::LIST_MODEL_PRICES, &request, "", "");
    let pb::ListModelPricesRequest {
        model,
        include_history,
    } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read, Scope::Usage])?;
        if model.chars().count() > LABEL_LEN_MAX {
            return Err(LedgerError::invalid(
                "model",
                format!("must be at most {LABEL_LEN_MAX} characters"),
            ));
        }
        let model = (!model.is_empty()).then_some(model);
        let prices = call
            .ledger()
            .prices(model.as_deref(), include_history)
            .await?;
        Ok(pb::ListModelPricesResponse {
            prices: prices
                .into_iter()
                .map(|(price, current)| price_to_pb(price, current))
                .collect(),
        })
    })
    .await
}

fn rates_from_pb(r: pb::ModelRates) -> Rates {
    Rates {
        input: r.input_per_million,
        cache_read: r.cache_read_per_million,
        cache_write: r.cache_write_per_million,
        output: r.output_per_million,
    }
}

fn rates_to_pb(r: Rates) -> pb::ModelRates {
    pb::ModelRates {
        input_per_million: r.input,
        cache_read_per_million: r.cache_read,
        cache_write_per_million: r.cache_write,
        output_per_million: r.output,
    }
}

fn price_to_pb(p: ModelPrice, current: bool) -> pb::ModelPrice {
    pb::ModelPrice {
        price_id: p.price_id.to_string(),
        model: p.model,
        effective_from: Some(chrono_to_timestamp(p.effective_from)),
        rates: Some(rates_to_pb(p.rates)),
        tiers: p
            .tiers
            .into_iter()
            .map(|t| pb::LongContextTier {
                above_input_tokens: t.above_input_tokens,
                rates: Some(rates_to_pb(t.rates)),
            })
            .collect(),
        created_by: p.created_by,
        created_at: Some(chrono_to_timestamp(p.created_at)),
        current,
    }
}
