// The ledger client: grpc-web to the origin that served this page, with the admin's credential
// as a bearer token on every call.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { LedgerService } from "./gen/tokenledger/v1/ledger_pb";

const STORAGE_KEY = "token-ledger.credential";

export function storedCredential(): string {
  try {
    return sessionStorage.getItem(STORAGE_KEY) ?? "";
  } catch {
    return "";
  }
}

export function storeCredential(credential: string | null): void {
  try {
    if (credential) sessionStorage.setItem(STORAGE_KEY, credential);
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // Storage disabled: the credential lives only in memory for this page.
  }
}

let credential = "";

export function setCredential(value: string): void {
  credential = value;
}

const auth: Interceptor = (next) => (req) => {
  if (credential) req.header.set("authorization", `Bearer ${credential}`);
  return next(req);
};

export const ledger: Client<typeof LedgerService> = createClient(
  LedgerService,
  createGrpcWebTransport({
    baseUrl: window.location.origin,
    interceptors: [auth],
  }),
);

// gRPC status code names, as the spec spells them (Code is numbered like grpc-status).
const CODE_NAMES: Record<number, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** One `google.rpc.BadRequest.FieldViolation`: the request field the ledger refused, and why. */
export interface FieldViolation {
  field: string;
  description: string;
}

export interface CallError {
  code: string;
  message: string;
  // INVALID_ARGUMENT names every refused field this way (the proto's convention); empty otherwise.
  fields: FieldViolation[];
  // The call may or may not have reached the ledger (a network error, a timeout, a 5xx from a
  // proxy): retrying a write must reuse its idempotency key.
  uncertain: boolean;
}

export function callError(err: unknown): CallError {
  const e = ConnectError.from(err);
  return {
    code: CODE_NAMES[e.code] ?? `CODE_${e.code}`,
    message: e.rawMessage || "(no message)",
    fields: badRequestFields(e),
    uncertain: [Code.Unknown, Code.Unavailable, Code.DeadlineExceeded, Code.Canceled, Code.Internal, Code.Aborted].includes(e.code),
  };
}

// A v4 UUID. crypto.randomUUID only exists in secure contexts (https, localhost); an admin page
// served over plain http on a private host still gets a random key from getRandomValues.
export function newIdempotencyKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const BAD_REQUEST = "google.rpc.BadRequest";

// The field violations of an error's google.rpc.BadRequest detail (from grpc-status-details-bin).
// Decoded by hand, with protobuf-es's wire reader: the two fields read here (field = 1,
// description = 2 of FieldViolation, repeated field_violations = 1 of BadRequest) are all this
// page needs, and generating google/rpc/error_details.proto would need that file vendored.
function badRequestFields(e: ConnectError): FieldViolation[] {
  const out: FieldViolation[] = [];
  for (const d of e.details) {
    if (!("type" in d) || d.type !== BAD_REQUEST) continue;
    try {
      const r = new BinaryReader(d.value);
      while (r.pos < r.len) {
        const [no, wt] = r.tag();
        if (no !== 1 || wt !== WireType.LengthDelimited) {
          r.skip(wt);
          continue;
        }
        const v = new BinaryReader(r.bytes());
        const fv: FieldViolation = { field: "", description: "" };
        while (v.pos < v.len) {
          const [n, w] = v.tag();
          if (n === 1 && w === WireType.LengthDelimited) fv.field = v.string();
          else if (n === 2 && w === WireType.LengthDelimited) fv.description = v.string();
          else v.skip(w);
        }
        out.push(fv);
      }
    } catch {
      // A detail we cannot read: the status message still says what was wrong.
    }
  }
  return out;
}
