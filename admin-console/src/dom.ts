// DOM and formatting helpers shared by every page of the console: elements are found by their
// data-testid; token amounts are bigints, shown with thousands separators.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { CallError } from "./client";

// ---- DOM helpers -------------------------------------------------------------------------------

export function el<T extends HTMLElement = HTMLElement>(testid: string): T {
  const found = document.querySelector<T>(`[data-testid="${testid}"]`);
  if (!found) throw new Error(`missing element ${testid}`);
  return found;
}

export const input = (testid: string) => el<HTMLInputElement>(testid);
export const button = (testid: string) => el<HTMLButtonElement>(testid);

export function show(node: HTMLElement, visible: boolean): void {
  node.hidden = !visible;
}

export function cell(row: HTMLTableRowElement, text: string, testid: string, cls = "", title = ""): HTMLTableCellElement {
  const td = row.insertCell();
  td.textContent = text;
  td.dataset.testid = testid;
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
}

// ---- formatting --------------------------------------------------------------------------------

export function tokens(n: bigint): string {
  return n.toLocaleString("en-US");
}

// "2026-11-24 08:40:00" (UTC); empty for an unset timestamp.
export function time(ts: Timestamp | undefined): string {
  if (!ts) return "";
  return timestampDate(ts).toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
}

export function setNumber(node: HTMLElement, n: bigint): void {
  node.textContent = tokens(n);
  node.dataset.value = n.toString();
  node.classList.toggle("negative", n < 0n);
}

// ---- error and result boxes --------------------------------------------------------------------

export function showError(context: string, err: CallError | string, hint = ""): void {
  el("error-context").textContent = context;
  el("error-text").textContent = typeof err === "string" ? err : `${err.code}: ${err.message}${hint ? ` ${hint}` : ""}`;
  show(el("error-box"), true);
}

export function clearError(): void {
  el("error-context").textContent = "";
  el("error-text").textContent = "";
  show(el("error-box"), false);
}

export function showResult(text: string): void {
  const box = el("op-result");
  box.textContent = text;
  show(box, text !== "");
}

