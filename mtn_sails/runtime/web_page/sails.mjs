// The model side of the page, shared with Node (examples/node_generate.mjs): the stored prompt
// template, tokens in, answer text streamed out. No DOM here; the caller passes transformers.js in.

// Python's str.format for the one field templates use: {content}; {{ and }} are literal braces.
export function formatField(pattern, content) {
  return pattern.replace(/\{\{|\}\}|\{content\}/g, (match) => (match === "{{" ? "{" : match === "}}" ? "}" : content));
}

// The BOS text once at the start, where the tokenizer adds one (Llama) and training wrote it (PromptTemplate.with_bos).
function withBos(template, text) {
  const bos = template.bos || "";
  return !bos || text.startsWith(bos) ? text : bos + text;
}

// The text the model was trained to answer, as PromptTemplate.prompt renders it (prompt_template.json).
// A model trained through its tokenizer's chat template (kind "chat") stores the one-question prompt
// that template renders as the `user` pattern, so no jinja is needed here; a system text needs the plain kind.
export function renderPrompt(template, question, system = "") {
  const head = system && template.kind !== "chat" ? formatField(template.system, system) : "";
  return withBos(template, head + formatField(template.user, question));
}

// Decode options that match mtn-sails generate: special tokens dropped, spacing left as generated.
const DECODE = { skip_special_tokens: true, clean_up_tokenization_spaces: false };

// A streamer for model.generate: the first put() is the prompt (skipped), then one token per put().
// Like the Python TextStreamer it decodes the whole completion each time and hands over only new
// characters, holding back text that ends in half a UTF-8 character (U+FFFD).
export class AnswerStreamer {
  constructor(tokenizer, onText) {
    this.tokenizer = tokenizer;
    this.onText = onText;
    this.tokenIds = [];
    this.written = 0;
    this.promptSeen = false;
  }

  put(value) {
    if (!this.promptSeen) {
      this.promptSeen = true;
      return;
    }
    this.tokenIds.push(Number(value[0][0]));
    const text = this.text();
    if (!text.endsWith("\ufffd")) {
      this.flush(text);
    }
  }

  end() {
    this.flush(this.text());
  }

  text() {
    // An answer that is only eos (sampling can draw it first) has no tokens left, and decode([]) throws.
    return this.tokenIds.length ? this.tokenizer.decode(this.tokenIds, DECODE) : "";
  }

  flush(text) {
    if (text.length > this.written) {
      this.onText?.(text.slice(this.written));
      this.written = text.length;
    }
  }
}

// Answer one question: greedy when temperature is 0, else nucleus sampling (top_k off, as in Python).
// Returns the text, the new token ids (eos not included), and timings.
export async function answer({ model, tokenizer, template }, question, options = {}, onText = null) {
  // minNewTokens holds eos back (benchmarks decode a fixed number of tokens, as Python's eos=None does)
  const { maxNewTokens = 64, minNewTokens = 0, temperature = 0, topP = 1.0, raw = false } = options;
  const prompt = raw ? question : renderPrompt(template, question);
  const inputs = tokenizer(prompt, { add_special_tokens: false }); // as training tokenised
  const promptTokens = inputs.input_ids.dims.at(-1);
  const streamer = new AnswerStreamer(tokenizer, onText);
  const sampling = temperature > 0 ? { do_sample: true, temperature, top_p: topP, top_k: 0 } : { do_sample: false };
  const started = performance.now();
  const minimum = minNewTokens > 0 ? { min_new_tokens: minNewTokens } : {};
  await model.generate({ ...inputs, max_new_tokens: maxNewTokens, streamer, ...sampling, ...minimum });
  const seconds = (performance.now() - started) / 1000;
  const eos = model.generation_config?.eos_token_id;
  const eosIds = new Set([eos].flat().filter((id) => id !== null && id !== undefined).map(Number));
  const tokenIds = streamer.tokenIds;
  const stoppedAtEos = tokenIds.length > 0 && eosIds.has(tokenIds.at(-1));
  if (stoppedAtEos) tokenIds.pop();
  return { text: streamer.text(), tokenIds, promptTokens, newTokens: tokenIds.length, seconds, stoppedAtEos };
}
