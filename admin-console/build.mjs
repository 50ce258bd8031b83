// `npm run bundle`: bundles src/main.ts (and everything it imports) into one self-contained
// ../static/admin/app.js, and copies index.html and style.css beside it. Deterministic: the same
// sources and lockfile give byte-identical output.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static", "admin");

await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.ts")],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  minify: true,
  sourcemap: false,
  legalComments: "eof",
  charset: "utf8",
  logLevel: "info",
});
for (const f of ["index.html", "style.css"]) {
  await copyFile(join(here, "src", f), join(out, f));
}
console.log(`wrote ${out}/{index.html,app.js,style.css}`);
