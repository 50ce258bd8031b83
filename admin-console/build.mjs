// `npm run bundle`: bundles src/main.ts (and everything it imports) into one self-contained
// ../static/admin/app.js, and copies index.html and style.css beside it. Deterministic: the same
// sources and lockfile give byte-identical output.
import { build } from "esbuild";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
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
for (const f of ["index.html", "favicon.svg"]) {
  await copyFile(join(here, "src", f), join(out, f));
}
// One stylesheet: ours, then uPlot's (the chart's legend and cursor need it). A second file would
// need a second route in src/console.rs; the page's CSP allows either, since both are 'self'.
const uplotCss = await readFile(join(here, "node_modules", "uplot", "dist", "uPlot.min.css"), "utf8");
const uplotVersion = JSON.parse(await readFile(join(here, "node_modules", "uplot", "package.json"), "utf8")).version;
const ownCss = await readFile(join(here, "src", "style.css"), "utf8");
await writeFile(join(out, "style.css"), `${ownCss}\n/* uPlot ${uplotVersion} (MIT) */\n${uplotCss.trim()}\n`);
console.log(`wrote ${out}/{index.html,favicon.svg,app.js,style.css}`);
