// transformers.js in Node on an mtn-sails export folder, as it is: prints one JSON line per question.
//   node examples/node_generate.mjs ONNX_DIR "What is a variable?" [--int8] [--max-new-tokens N] [--temperature T]
//        [--top-p P] [--repeat R] [--min-new-tokens N (eos held back: a fixed length, for benchmarks)]
// Needs `npm ci` (make does it). The tests compare its greedy tokens with Python's generate.
import { readFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { parseArgs } from "node:util";

import { AutoModelForCausalLM, AutoTokenizer, env } from "@huggingface/transformers";

import { answer } from "../mtn_sails/runtime/web_page/sails.mjs";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    int8: { type: "boolean", default: false },
    "max-new-tokens": { type: "string", default: "64" },
    "min-new-tokens": { type: "string", default: "0" },
    temperature: { type: "string", default: "0" },
    "top-p": { type: "string", default: "1" },
    repeat: { type: "string", default: "1" },
  },
});
const [onnxDir, ...questions] = positionals;
if (!onnxDir || questions.length === 0) {
  console.error("usage: node examples/node_generate.mjs ONNX_DIR QUESTION... [--int8] [--max-new-tokens N]");
  process.exit(2);
}
const folder = resolve(onnxDir);
env.allowRemoteModels = false; // offline: the folder or nothing
env.localModelPath = dirname(folder) + "/";
const started = performance.now();
const tokenizer = await AutoTokenizer.from_pretrained(basename(folder));
const model = await AutoModelForCausalLM.from_pretrained(basename(folder), { dtype: values.int8 ? "q8" : "fp32" });
const template = JSON.parse(readFileSync(`${folder}/prompt_template.json`, "utf-8"));
const loadSeconds = (performance.now() - started) / 1000;
const options = {
  maxNewTokens: Number(values["max-new-tokens"]),
  minNewTokens: Number(values["min-new-tokens"]),
  temperature: Number(values.temperature),
  topP: Number(values["top-p"]),
};
for (const question of questions) {
  for (let round = 0; round < Number(values.repeat); round++) {
    const result = await answer({ model, tokenizer, template }, question, options);
    console.log(JSON.stringify({ question, round, loadSeconds, ...result }));
  }
}
await model.dispose();
