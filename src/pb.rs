//! The generated protobuf types and gRPC stubs of `proto/tokenledger/v1/ledger.proto`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("tokenledger.v1");

/// The encoded descriptor set of our protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ledger_descriptor.bin"));
