// The page: checks that the browser can run the model, loads the export with transformers.js
// (vendored beside this file: no CDN, works offline) and streams answers into the page.
import { answer } from "./sails.mjs";

const $ = (id) => document.getElementById(id);
const loaded = { model: null, tokenizer: null, template: null, dtype: null };
// What the browser test and benchmarks/web_speed.py read (and the model they may call answer() with).
const page = { ready: false, answered: 0, last: null, error: null, loaded };
window.sails = page;

function show(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

// The smallest WebAssembly module with one SIMD (v128) instruction: it validates only where SIMD runs.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0,
  65, 0, 253, 15, 253, 98, 11]);

// What this browser lacks for the model, in words a user can act on; null when nothing is missing.
export function missingFeature() {
  if (location.protocol === "file:") {
    return "Open this page through a web server, not as a file: run `mtn-sails web --serve` (or any static " +
      "server in this folder). Browsers do not let a page opened from disk load the model files.";
  }
  if (typeof WebAssembly !== "object" || typeof WebAssembly.validate !== "function") {
    return "This browser has no WebAssembly (or a policy turned it off), and the model runs on WebAssembly.";
  }
  if (!WebAssembly.validate(SIMD_PROBE)) {
    return "This browser's WebAssembly has no SIMD, which onnxruntime-web needs: use Chrome or Edge 91+, " +
      "Firefox 89+ or Safari 16.4+.";
  }
  if (typeof fetch !== "function" || typeof BigInt64Array !== "function" || typeof TextDecoder !== "function") {
    return "This browser is too old for this page (it needs fetch, BigInt64Array and TextDecoder).";
  }
  return null;
}

let transformers = null;
let site = null;

async function loadModel(dtype) {
  if (loaded.dtype === dtype) return;
  $("send").disabled = true;
  show(`Loading the ${dtype === "q8" ? "int8" : "fp32"} model…`, "loading");
  await loaded.model?.dispose();
  loaded.model = await transformers.AutoModelForCausalLM.from_pretrained(site.model, { dtype, device: "wasm" });
  loaded.dtype = dtype;
  page.ready = true;
  $("send").disabled = false;
  show(`Ready: ${site.name}, ${dtype === "q8" ? "int8" : "fp32"}, WebAssembly with ${threads()}.`, "ready");
}

function threads() {
  const count = transformers.env.backends.onnx.wasm.numThreads;
  return count === 1 ? "1 thread" : `${count || "several"} threads`;
}

async function start() {
  const missing = missingFeature();
  if (missing) {
    show(missing, "error");
    page.error = missing;
    return;
  }
  site = await (await fetch("site.json", { cache: "no-store" })).json();
  $("model-name").textContent = site.name;
  $("max-new-tokens").value = site.max_new_tokens;
  $("int8-choice").hidden = !site.dtypes.includes("q8");
  loaded.template = site.template;
  transformers = await import("./vendor/transformers.min.js");
  const { env } = transformers;
  env.allowRemoteModels = false; // the model folder beside this page, never the hub
  env.allowLocalModels = true;
  env.localModelPath = new URL(".", location.href).pathname;
  env.useBrowserCache = false; // a re-export replaces the files; a cached copy would answer with the old model
  const wasm = env.backends.onnx.wasm;
  wasm.wasmPaths = {
    mjs: new URL("vendor/ort-wasm-simd-threaded.mjs", location.href).href,
    wasm: new URL("vendor/ort-wasm-simd-threaded.wasm", location.href).href,
  };
  // Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated pages
  // (`mtn-sails web --serve` sends the two headers); elsewhere one thread.
  wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  show("Loading the tokenizer…", "loading");
  loaded.tokenizer = await transformers.AutoTokenizer.from_pretrained(site.model);
  await loadModel("fp32");
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  await loadModel($("int8").checked ? "q8" : "fp32");
  const sampling = document.querySelector('input[name="mode"]:checked').value === "sample";
  const options = {
    maxNewTokens: Math.max(1, Number($("max-new-tokens").value) || site.max_new_tokens),
    temperature: sampling ? Number($("temperature").value) || 0.8 : 0,
    topP: Number($("top-p").value) || 1,
  };
  $("send").disabled = true;
  $("answer").textContent = "";
  $("speed").textContent = "";
  show("Answering…", "answering");
  const result = await answer(loaded, question, options, (piece) => { $("answer").textContent += piece; });
  const speed = result.seconds > 0 ? result.newTokens / result.seconds : 0;
  $("speed").textContent = `${result.newTokens} tokens in ${result.seconds.toFixed(2)} s (${speed.toFixed(1)} tokens/s, ` +
    `${sampling ? "sampling" : "greedy"}${result.stoppedAtEos ? ", stopped at end of text" : ""})`;
  page.last = { question, ...options, ...result };
  page.answered += 1;
  $("send").disabled = false;
  show(`Ready: ${site.name}, ${loaded.dtype === "q8" ? "int8" : "fp32"}, WebAssembly with ${threads()}.`, "ready");
}

$("ask").addEventListener("submit", (event) => ask(event).catch(fail));
start().catch(fail);

function fail(error) {
  page.error = String(error?.message || error);
  show(`Could not run the model: ${page.error}`, "error");
  $("send").disabled = !page.ready;
}
