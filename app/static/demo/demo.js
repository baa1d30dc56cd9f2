// Shape Detector demo page: generate or load a signal, run it through the public /v1 API,
// draw the signal, the per-sample score curve and the detected peaks as SVG.
//
// Everything stays in this page: the API key lives only in the password field (never in web
// storage or cookies) and is sent as "Authorization: Bearer <key>".
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const EXAMPLE_LENGTH = 600;
  const MAX_FILE_BYTES = 20 * 1024 * 1024;
  const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
  const NAN = /^[+-]?nan$/i;
  const INF = /^[+-]?inf(inity)?$/i;

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("controls"),
    model: $("model"),
    modelInfo: $("model-info"),
    threshold: $("threshold"),
    key: $("api-key"),
    values: $("values"),
    count: $("values-count"),
    file: $("file"),
    example: $("example"),
    run: $("run"),
    status: $("status"),
    error: $("error"),
    result: $("result"),
    figure: $("figure"),
    chartBox: $("chart-box"),
    chart: $("chart"),
    chartTitle: $("chart-title"),
    peaks: $("peaks"),
  };

  const state = {
    models: new Map(), // name -> card
    defaultModel: "", // the name behind "default model" (POST /v1/detect)
    example: null, // {events, spike, seed} of the generated signal in the text box
    drawn: null, // what the chart shows: {values, scores, peaks, threshold, events}
    edits: 0, // changes of the signal in the box (example, file, paste, typing)
    run: null, // the detection in flight: {key, edit}
    examples: 0,
    shownThreshold: "", // the card's threshold the page last put in the field
    pending: "", // why the default model is not in the list, while the page waits for it
    relists: 0, // the list read again while the default model is missing
  };

  // ---------------------------------------------------------------------------------------
  // The example signal: the primer's template in white Gaussian noise, sometimes a spike.

  function mulberry32(seed) {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function gaussian(rand) {
    let u = 0;
    while (u === 0) u = rand();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  }

  // The primer's K(s) = exp(-(s/6)^2 / 2) cos(2 pi s / 16), s = -20..20 samples from the centre:
  // the examples' shape when no model's card is known.
  const bump = (s) => Math.exp(-((s / 6) ** 2) / 2) * Math.cos((2 * Math.PI * s) / 16);
  const MAX_EXAMPLE_SHAPE = 10000; // longer templates: the primer's shape (an example of 60 000+ samples)
  const PRIMER_SHAPE = { values: Array.from({ length: 41 }, (_, i) => bump(i - 20)), center: 20 };

  // The shape of the chosen model (the default model's for "default model"): its card's
  // template, its event at the card's template_center. An example of another model's shape
  // would be compared with peaks the chosen model was never trained to find.
  function exampleShape() {
    const card = state.models.get(el.model.value || state.defaultModel);
    const values = card ? card.template : null;
    const center = card ? card.template_center : null;
    const usable =
      Array.isArray(values) &&
      values.length > 0 &&
      values.length <= MAX_EXAMPLE_SHAPE &&
      values.every(Number.isFinite) &&
      Number.isInteger(center) &&
      center >= 0 &&
      center < values.length &&
      values.some((v) => v !== 0);
    return usable ? { values, center } : PRIMER_SHAPE;
  }

  function makeExample(seed, shape) {
    const rand = mulberry32(seed);
    const n = Math.max(EXAMPLE_LENGTH, 6 * shape.values.length); // room for three long events
    const x = Array.from({ length: n }, () => gaussian(rand));
    const count = 1 + Math.floor(rand() * 3);
    const events = [];
    const len = shape.values.length;
    const norm = Math.sqrt(shape.values.reduce((a, v) => a + v * v, 0));
    // Whole events, clear of the ends and of each other (the primer's: 30 samples, 60 apart).
    const first = Math.max(30, shape.center + 10);
    const last = n - Math.max(30, len - shape.center + 9);
    const apart = Math.max(60, len);
    for (let tries = 0; events.length < count && tries < 1000; tries++) {
      const c = first + Math.floor(rand() * (last - first));
      if (events.every((e) => Math.abs(e - c) >= apart)) events.push(c);
    }
    events.sort((a, b) => a - b);
    for (const c of events) {
      const amplitude = (7 + 4 * rand()) / norm; // matched-filter SNR 7..11
      for (let k = 0; k < len; k++) {
        const i = c - shape.center + k;
        if (i >= 0 && i < n) x[i] += amplitude * shape.values[k];
      }
    }
    let spike = null;
    if (rand() < 0.5) {
      for (let tries = 0; tries < 100; tries++) {
        const p = 10 + Math.floor(rand() * (n - 20));
        if (events.every((e) => Math.abs(e - p) >= 40)) {
          spike = p;
          x[p] += (rand() < 0.5 ? -1 : 1) * (8 + 6 * rand());
          break;
        }
      }
    }
    return { values: x.map((v) => Math.round(v * 1e4) / 1e4), events, spike, seed };
  }

  function nextSeed() {
    const fixed = new URLSearchParams(window.location.search).get("seed");
    state.examples += 1;
    if (fixed !== null && /^\d{1,9}$/.test(fixed)) return Number(fixed) + state.examples - 1;
    const buf = new Uint32Array(1);
    window.crypto.getRandomValues(buf);
    return buf[0] % 1000000000;
  }

  // ---------------------------------------------------------------------------------------
  // Values from text: numbers separated by commas, semicolons, whitespace or new lines.

  const split = (text) => text.split(/[\s,;]+/).filter((t) => t !== "");
  const isWordy = (t) => /[A-Za-z_]/.test(t) && !NAN.test(t) && !INF.test(t) && !NUMBER.test(t);

  // A /v1 request body, {"signals": [[0.1, 0.2, ...]]}, as a user of the API has at hand: the
  // numbers of its one signal, as text, or why it is refused (a JSON object of anything else).
  const READS =
    'the demo reads a /v1 request body of one signal, {"signals": [[0.1, 0.2, …]]}, a JSON list ' +
    "of numbers, or numbers separated by commas, spaces or new lines.";

  // JSON.parse of a text that starts with ``start``: {value}, or {refusal} saying why not.
  function parsedJson(text, start) {
    try {
      return { value: JSON.parse(text) };
    } catch (exc) {
      return { refusal: `starts with “${start}” but is not valid JSON (${exc.message}): ${READS}` };
    }
  }

  // The place and the text of the first value that is not a number, or null if all are.
  function firstNonNumber(values) {
    const i = values.findIndex((v) => typeof v !== "number");
    return i < 0 ? null : { place: i + 1, shown: String(JSON.stringify(values[i])).slice(0, 40) };
  }

  function requestSignal(text) {
    const parsed = parsedJson(text, "{");
    if (parsed.refusal) return parsed;
    const body = parsed.value;
    const keys = Object.keys(body).map((k) => `“${k}”`);
    const signals = body.signals;
    if (!Array.isArray(signals) || signals.length === 0 || !signals.every(Array.isArray)) {
      const has = keys.length ? `its keys are ${keys.join(", ")}` : "it is empty";
      const what = Array.isArray(signals) ? "“signals” that is not a list of signals" : "no “signals”";
      return { refusal: `is a JSON object with ${what} (${has}): ${READS}` };
    }
    if (signals.length > 1) {
      return {
        refusal:
          `is a /v1 request body of ${signals.length} signals: the demo takes one signal. Keep only ` +
          'the one to look at (the first, say: {"signals": [[…]]}), or send them all to the API ' +
          "(POST /v1/detect).",
      };
    }
    const row = signals[0];
    const bad = firstNonNumber(row);
    if (bad !== null) {
      return {
        refusal:
          `is a /v1 request body whose signal's value ${bad.place} is ${bad.shown}, not a number: write ` +
          'its values as numbers, {"signals": [[0.1, 0.2, …]]}.',
      };
    }
    const others = keys.filter((k) => k !== "“signals”");
    const unused = others.length ? ` (its ${others.join(", ")} not used: the page's settings apply)` : "";
    return { text: row.join(", "), note: `the one signal of the /v1 request body's “signals”${unused}` };
  }

  // A JSON list of lists of numbers (numpy's tolist() of a 2-D array): one row is one signal,
  // and so is a column, rows of one number each (of x.reshape(-1, 1)); several longer rows are
  // several signals, refused. The numbers as text, or why it is refused.
  function rowsSignal(text) {
    const parsed = parsedJson(text, "[[");
    if (parsed.refusal) return parsed;
    const rows = parsed.value;
    if (!Array.isArray(rows) || rows.length === 0 || !rows.every(Array.isArray)) {
      return { refusal: `is not a JSON list of lists of numbers: ${READS}` };
    }
    const column = rows.length > 1 && rows.every((r) => r.length === 1);
    if (rows.length > 1 && !column) {
      return {
        refusal:
          `is a JSON list of ${rows.length} lists, ${rows.length} signals: the demo takes one signal. ` +
          "Keep only the one to look at ([[0.1, 0.2, …]]), or send them all to the API (POST /v1/detect).",
      };
    }
    const values = column ? rows.map((r) => r[0]) : rows[0];
    const bad = firstNonNumber(values);
    if (bad !== null) {
      return { refusal: `is a JSON list whose value ${bad.place} is ${bad.shown}, not a number: write its values as numbers.` };
    }
    const note = column ? `the column of ${values.length} one-number lists` : "the one list of the JSON list of lists";
    return { text: values.join(", "), note };
  }

  function parseValues(text) {
    let note = "";
    if (/^\s*(\{|\[\s*\[)/.test(text)) {
      const body = /^\s*\{/.test(text) ? requestSignal(text) : rowsSignal(text);
      if (body.refusal) {
        return { tokens: [], numbers: [], bad: null, header: null, columns: 1, rows: 0, note, refusal: body.refusal };
      }
      text = body.text;
      note = body.note;
    }
    // A JSON (or Python) list of numbers, "[0.1, 0.2]", is one signal: its brackets are not
    // part of its first and last values.
    const list = /^\s*\[([^[\]]*)\]\s*$/.exec(text);
    let lines = (list === null ? text : list[1]).split(/\r?\n/);
    let header = null;
    const first = lines.findIndex((l) => l.trim() !== "");
    if (first >= 0) {
      const toks = split(lines[first]);
      const more = lines.slice(first + 1).some((l) => l.trim() !== "");
      if (toks.length > 0 && toks.every(isWordy) && more) {
        header = lines[first].trim();
        lines = lines.slice(first + 1);
      }
    }
    const tokens = split(lines.join("\n"));
    const numbers = [];
    let bad = null; // the first token that is not a finite number
    tokens.forEach((quoted, i) => {
      // A value in one pair of double quotes ("0.1257", as a CSV writer quoting every field
      // writes it) is that value. Only the first and last characters are looked at: this runs
      // on every value of a million-value file.
      let t = quoted;
      if (t.length > 1 && t.charCodeAt(0) === 34 && t.charCodeAt(t.length - 1) === 34) {
        t = t.slice(1, -1);
        tokens[i] = t;
      }
      const v = NUMBER.test(t) ? Number(t) : NaN;
      numbers.push(v);
      if (!Number.isFinite(v) && bad === null) bad = { index: i, token: t };
    });
    // A table (the same number of values, two or more, on every line) is not one signal.
    const widths = lines.filter((l) => l.trim() !== "").map((l) => split(l).length);
    const columns = widths.length > 1 && widths[0] > 1 && widths.every((w) => w === widths[0]) ? widths[0] : 1;
    return { tokens, numbers, bad, header, columns, rows: widths.length, note, refusal: null };
  }

  // A token as it is sent when not every value is a finite number: NaN and infinities as the
  // bare (invalid JSON) tokens, other text as a JSON string, so the API's own message says what
  // is wrong with it.
  function rawToken(t, v) {
    if (Number.isFinite(v)) return JSON.stringify(v);
    if (NAN.test(t)) return "NaN";
    if (INF.test(t) || NUMBER.test(t)) return (t.startsWith("-") ? "-" : "") + "Infinity";
    return JSON.stringify(t);
  }

  function requestBody(parsed, threshold) {
    const options = { return_scores: true };
    if (threshold !== null) options.threshold = threshold;
    if (parsed.bad === null) return JSON.stringify({ signals: [parsed.numbers], ...options });
    const row = parsed.tokens.map((t, i) => rawToken(t, parsed.numbers[i])).join(",");
    return `{"signals":[[${row}]],${JSON.stringify(options).slice(1)}`;
  }

  // The threshold typed: null when empty (the model's own), NaN when it is not a finite number.
  // A decimal comma is the decimal point ("0,5" is 0.5): one number between 0 and 1 has no
  // thousands to separate, and a phone's decimal keypad may offer only the comma. The field is
  // text, read here: a number field (in Chromium) dropped the comma and gave "05", 5.
  function readThreshold() {
    const text = el.threshold.value.trim();
    if (text === "") return null;
    const point = /^[+-]?\d*,\d*$/.test(text) ? text.replace(",", ".") : text;
    const v = NUMBER.test(point) ? Number(point) : NaN;
    return Number.isFinite(v) ? v : NaN; // 1e999 too: JSON would carry it as null, the model's own
  }

  // ---------------------------------------------------------------------------------------
  // The API.

  function authHeaders() {
    const key = el.key.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function apiMessage(status, data) {
    if (data && typeof data.detail === "string") return data.detail;
    if (data && Array.isArray(data.detail)) {
      return data.detail
        .map((d) => {
          const loc = Array.isArray(d.loc) ? d.loc.join(" → ") : "";
          return loc ? `${loc}: ${d.msg}` : String(d.msg);
        })
        .join("\n");
    }
    if (data && typeof data.error === "string") return data.error;
    return `HTTP ${status}`;
  }

  async function callApi(url, init) {
    let response;
    try {
      response = await fetch(url, { cache: "no-store", ...init });
    } catch (exc) {
      return { ok: false, status: 0, message: `Could not reach the service (${exc.message}).` };
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (response.ok) return { ok: true, status: response.status, data };
    let message = apiMessage(response.status, data);
    if (response.status === 401) message += "\nEnter a valid API key in the “API key” field.";
    if (response.status === 503) message += "\nThe service is busy or still loading; try again shortly.";
    return { ok: false, status: response.status, message };
  }

  // The list read again while the default model is not in it: a server that has just started (or
  // restarted its workers) takes requests while its models load, and lists those loaded so far.
  const RELIST_MS = 2000;
  const RELISTS = 30;
  let relistTimer = 0;

  async function loadModels() {
    window.clearTimeout(relistTimer);
    const r = await callApi("/v1/models", { headers: authHeaders() });
    if (!r.ok) {
      const reason = r.message.split("\n")[0];
      el.modelInfo.textContent =
        r.status === 401
          ? `This server needs a valid API key to list its models: enter it in “API key” (${reason}).`
          : `Could not list the models: ${reason}`;
      return;
    }
    const previous = el.model.value;
    state.models = new Map(r.data.models.map((card) => [card.name, card]));
    state.defaultModel = r.data.default;
    el.model.replaceChildren();
    for (const card of r.data.models) {
      const option = document.createElement("option");
      option.value = card.name;
      option.textContent = `${card.name} ${card.version}`;
      el.model.append(option);
    }
    // Without the default model listed, "default model" comes first and is chosen (unless the
    // user chose a listed one): not another model in its place, unseen.
    state.pending = "";
    if (!state.models.has(r.data.default)) {
      const option = document.createElement("option");
      option.value = "";
      option.textContent = "default model";
      el.model.prepend(option);
      state.pending =
        `The default model, ${r.data.default}, is not serving yet (loading, or it failed to load: ` +
        "/readyz says why).";
      if (state.relists < RELISTS) {
        state.relists += 1;
        state.pending += " The list is read again in a few seconds.";
        relistTimer = window.setTimeout(loadModels, RELIST_MS);
      }
    }
    if (state.models.has(previous)) el.model.value = previous;
    else if (state.models.has(r.data.default)) el.model.value = r.data.default; // /v1/detect's
    else el.model.value = "";
    // A threshold the user typed stays (the list reloads when an API key is entered).
    const typed = el.threshold.value.trim();
    showModel(typed !== "" && typed !== state.shownThreshold);
  }

  function showModel(keepThreshold = false) {
    const card = state.models.get(el.model.value);
    if (!card) {
      el.modelInfo.textContent = state.pending;
      return;
    }
    if (!keepThreshold) {
      state.shownThreshold = String(card.threshold);
      el.threshold.value = state.shownThreshold;
    }
    el.modelInfo.textContent =
      `Threshold ${card.threshold}, peaks at least ${card.min_distance} samples apart, ` +
      `signals of at least ${card.min_length} samples.`;
  }

  // ---------------------------------------------------------------------------------------
  // The page.

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  // No chart, peaks or probability of an earlier signal or run beside a new one or an error.
  function clearOutput(text) {
    state.drawn = null;
    el.figure.hidden = true;
    el.peaks.hidden = true;
    el.peaks.tBodies[0].replaceChildren();
    for (const child of Array.from(el.chart.childNodes)) if (child !== el.chartTitle) child.remove();
    el.result.textContent = text;
  }

  // The values a run sends: a header line (words only, values below it) is not one of them.
  // Only a short first line is looked at: the box may hold a million values on one line.
  function updateCount() {
    cancelCount();
    const text = el.values.value;
    let n = split(text).length;
    const first = /^\s*([^\r\n]{1,1000})\r?\n\s*\S/.exec(text);
    if (/^\s*(\{|\[\s*\[)/.test(text)) {
      n = parseValues(text).tokens.length; // a /v1 request body or a list of lists: its signal's values
    } else if (first !== null) {
      const words = split(first[1]);
      if (words.every(isWordy)) n -= words.length;
    }
    el.count.textContent = n ? `${n} value${n === 1 ? "" : "s"}.` : "";
  }

  // Typing in a large text (a million values loaded or pasted: 8.5 MB on one line) is counted
  // once typing pauses: counting reads the whole text, 0.1 to 0.3 s (a /v1 request body about
  // a second, being parsed) that every key press waited for. A short text is counted at every
  // key press. Run reads the text itself, whether counted yet or not.
  const COUNT_AT_ONCE_CHARS = 100000; // counted in about a millisecond
  const COUNT_PAUSE_MS = 400;
  let countFrame = 0;
  let countTimer = 0;

  function cancelCount() {
    window.cancelAnimationFrame(countFrame);
    window.clearTimeout(countTimer);
    countFrame = 0;
    countTimer = 0;
  }

  function countWhenTypingPauses() {
    if (el.values.value.length <= COUNT_AT_ONCE_CHARS) {
      updateCount();
      return;
    }
    cancelCount();
    el.count.textContent = "Counting the values once typing pauses.";
    // The pause is timed from the end of the frame that shows the key press: the browser lays
    // out a box of megabytes for as long as a second itself, which a timer started at the key
    // press would take for a pause (and count between every two key presses).
    countFrame = window.requestAnimationFrame(() => {
      countFrame = 0;
      countTimer = window.setTimeout(() => {
        countTimer = window.setTimeout(updateCount, COUNT_PAUSE_MS);
      }, 0);
    });
  }

  function onExample() {
    state.edits += 1;
    const ex = makeExample(nextSeed(), exampleShape());
    el.values.value = ex.values.join(", ");
    state.example = { events: ex.events, spike: ex.spike, seed: ex.seed };
    updateCount();
    clearError();
    const spike = ex.spike === null ? "" : ` and a one-sample spike at ${ex.spike}`;
    el.status.textContent =
      `Example ${ex.seed}: ${ex.values.length} samples with ${ex.events.length} ` +
      `event${ex.events.length > 1 ? "s" : ""} centred at ${ex.events.join(", ")}${spike}. ` +
      "Now run detection.";
    el.result.textContent = "Not run yet for this signal.";
    draw({ values: ex.values, scores: null, peaks: [], threshold: null, events: ex.events, seed: ex.seed });
  }

  async function onFile() {
    const file = el.file.files && el.file.files[0];
    if (!file) return;
    state.edits += 1;
    clearError();
    if (file.size > MAX_FILE_BYTES) {
      refuseFile(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the demo takes files up to 20 MB (use the API for more).`);
      return;
    }
    let text;
    try {
      text = await file.text();
    } catch (exc) {
      refuseFile(`Could not read ${file.name}: ${exc.message}`);
      return;
    }
    // Binary data (a NumPy .npy file, a spreadsheet, an image) decoded as text gave a few
    // "values" of garbage, loaded as if they were the signal. Text files hold no NUL character.
    if (text.includes("\0")) {
      const npy = text.startsWith("\uFFFDNUMPY");
      refuseFile(
        `${file.name} is not a text file${npy ? " but a NumPy .npy file" : ""}: load a CSV or text ` +
          "file of the signal's values, one per line or all on one line" +
          (npy
            ? " (numpy.savetxt writes one), or send the .npy file itself to the API " +
              "(POST /v1/detect with Content-Type: application/x-npy, see the API docs)."
            : "."),
      );
      return;
    }
    const parsed = oneSignal(text, file.name, "Keep only the signal's column.");
    if (parsed === null) {
      refuseFile(null); // oneSignal said why
      return;
    }
    if (parsed.tokens.length === 0) {
      refuseFile(
        `${file.name} ${file.size === 0 ? "is empty" : "holds no values"}: load a CSV or text file ` +
          "of the signal's values, one per line or all on one line.",
      );
      return;
    }
    // The values on one line, as an example's: a text box of a million lines takes seconds to
    // lay out, at every key press in it. The header, if any, is named in the status line.
    el.values.value = parsed.tokens.join(", ");
    state.example = null;
    updateCount();
    clearOutput("Not run yet for this signal.");
    el.status.textContent = `Loaded ${file.name}: ${parsed.tokens.length} values${skipped(parsed)}. Now run detection.`;
    el.file.value = ""; // the same file, edited since, can be chosen again (the status names it)
  }

  // A file not loaded: the error (unless shown already); the values in the box stay, and no
  // result of an earlier run stays beside the error.
  function refuseFile(message) {
    if (message !== null) showError(message);
    el.status.textContent = "";
    el.file.value = ""; // the same file, once fixed, can be chosen again
    clearOutput("No result: see the error above.");
  }

  // The non-empty lines of a text below its header line, if any.
  function dataLines(text, parsed) {
    const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
    return parsed.header === null ? lines : lines.slice(1);
  }

  // The number of values on each line of a text of numbers separated by semicolons, some with a
  // decimal comma ("0,25;1;-0,5", each maybe in double quotes), or null if it is not one.
  const SEMICOLON_LINE = /^\s*("?)[+-]?\d+(?:,\d+)?\1\s*(?:;\s*("?)[+-]?\d+(?:,\d+)?\2\s*)*;?\s*$/;

  function semicolonDecimalCommas(text, parsed) {
    const data = dataLines(text, parsed);
    const one = data.length > 0 && data.every((l) => SEMICOLON_LINE.test(l));
    if (!one || !data.some((l) => l.includes(";")) || !data.some((l) => l.includes(","))) return null;
    return data.map((l) => l.split(";").filter((f) => f.trim() !== "").length);
  }

  // The values of a loaded or pasted text, or null (the error shown) if it is a table.
  function oneSignal(text, what, fix) {
    const parsed = parseValues(text);
    if (parsed.refusal !== null) {
      showError(`${what} ${parsed.refusal}`);
      return null;
    }
    // Values separated by semicolons, with decimal commas ("0,1;0,2" lines, as a spreadsheet
    // set to such a locale exports CSV), read as twice as many integers: say so, and refuse
    // them even on one line, where they read as one signal of the wrong values.
    if (parsed.note === "" && text.includes(";") && text.includes(",")) {
      const counts = semicolonDecimalCommas(text, parsed);
      if (counts !== null) {
        const table = counts.length > 1 && counts.some((c) => c > 1);
        const where =
          counts.length === 1
            ? `is one line of ${counts[0]} values`
            : counts.every((c) => c === counts[0])
              ? `has ${counts[0]} value${counts[0] === 1 ? "" : "s"} on each of its ${counts.length} lines`
              : `has ${counts.length} lines of values`;
        showError(
          `${what} ${where}, separated by semicolons, with decimal commas (0,25): ` +
            (table
              ? "the demo takes one signal, as one column (one value per line) or one line, and " +
                `here a comma separates values. Write decimal points (0.25), and ${fix[0].toLowerCase()}${fix.slice(1)}`
              : "here a comma separates values, so each would be read as two. Write decimal points (0.25)."),
        );
        return null;
      }
    }
    if (parsed.columns === 1) return parsed;
    // One column of numbers with a decimal comma ("0,25" on every line, as a spreadsheet set to
    // such a locale exports it) reads as two columns of integers: say so, not only "a table".
    const decimalComma = dataLines(text, parsed).every((l) => /^\s*("?)[+-]?\d+,\d+\1\s*$/.test(l));
    showError(
      `${what} has ${parsed.columns} values on each of its ${parsed.rows} lines: the demo takes ` +
        `one signal, as one column (one value per line) or one line. ` +
        (decimalComma
          ? "If each line is one number with a decimal comma (0,25), write it with a decimal " +
            "point (0.25): here a comma separates values."
          : fix),
    );
    return null;
  }

  const skipped = (parsed) =>
    (parsed.header === null ? "" : ` (header line “${parsed.header}” skipped)`) + (parsed.note ? `, ${parsed.note}` : "");

  // Many lines pasted (a column copied from a spreadsheet) go in on one line, as a loaded
  // file's: a text box of a million lines takes seconds to lay out, at every key press in it.
  const PASTE_MAX_LINES = 1000;

  function onPaste(event) {
    const text = event.clipboardData ? event.clipboardData.getData("text/plain") : "";
    const body = /^\s*(\{|\[\s*\[)/.test(text); // a /v1 request body or a list of lists: its signal's values go in
    if (!body && text.split("\n", PASTE_MAX_LINES + 1).length <= PASTE_MAX_LINES) return; // pasted as it is
    event.preventDefault();
    clearError();
    const parsed = oneSignal(text, "The pasted text", "Paste only the signal's column.");
    if (parsed === null) return;
    state.edits += 1;
    const { selectionStart, selectionEnd } = el.values;
    el.values.setRangeText(parsed.tokens.join(", "), selectionStart, selectionEnd, "end");
    state.example = null; // edited by hand: the generated events no longer apply
    updateCount();
    el.status.textContent = `Pasted ${parsed.tokens.length} values on one line${skipped(parsed)}.`;
  }

  // A detection's result is shown only beside the signal it ran on: one that ends after the
  // values changed (a new example, a file, typing) or after another run started is dropped.
  async function onRun(event) {
    event.preventDefault();
    const key = `${state.edits} ${el.model.value} ${el.threshold.value}`;
    if (state.run !== null && state.run.key === key) return; // running on these already
    state.run = null;
    el.form.removeAttribute("aria-busy");
    clearError();
    // Typed or pasted text is checked as a loaded file is: a table, or values with decimal
    // commas, would run as one signal of the wrong values.
    const parsed = oneSignal(el.values.value, "The text in “Signal values”", "Keep only the signal's column there.");
    if (parsed === null) {
      clearOutput("No result: see the error above.");
      return;
    }
    if (parsed.tokens.length === 0) {
      showError("No values yet: generate an example, paste values or load a file first.");
      return;
    }
    const threshold = readThreshold();
    if (Number.isNaN(threshold)) {
      // Not the model's own threshold in its place: that would hide the typing mistake.
      showError("Threshold is not a number: enter one between 0 and 1, or empty the field for the model's own.");
      clearOutput("No result: see the error above.");
      return;
    }
    const name = el.model.value;
    const url = name ? `/v1/models/${encodeURIComponent(name)}/detect` : "/v1/detect";
    // The card's threshold as the page put it is not sent: the model's own, so a model reloaded
    // since the list was read uses its new card's threshold, not the old one.
    const own = state.models.has(name) && el.threshold.value.trim() === state.shownThreshold;
    const run = { key, edit: state.edits, superseded: false };
    state.run = run;
    el.form.setAttribute("aria-busy", "true");
    const running = `Running detection on ${parsed.tokens.length} values…`;
    el.status.textContent = running;
    let r;
    try {
      r = await callApi(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: requestBody(parsed, own ? null : threshold),
      });
    } finally {
      if (state.run === run) {
        state.run = null;
        el.form.removeAttribute("aria-busy");
      } else {
        run.superseded = true;
      }
    }
    if (run.superseded) return;
    if (run.edit !== state.edits) {
      if (el.status.textContent === running) {
        el.status.textContent = "The values changed while detection ran: run detection again.";
      }
      return;
    }
    if (!r.ok) {
      el.status.textContent = "";
      let message = `The API refused the request (HTTP ${r.status}):\n${r.message}`;
      if (r.status === 0) message = r.message;
      if (parsed.bad !== null) {
        message =
          `Value ${parsed.bad.index + 1} (“${parsed.bad.token}”) is not a finite number; ` +
          `it was sent as it is. ${message}`;
      }
      showError(message);
      clearOutput("No result: see the error above.");
      return;
    }
    const doc = r.data;
    const res = doc.results[0];
    const events = state.example ? state.example.events : null;
    el.status.textContent = parsed.note ? `Ran on ${parsed.note}.` : "";
    showResult(doc, res, parsed.numbers.length);
    draw({
      values: parsed.numbers,
      scores: res.scores,
      peaks: shownPeaks(res.peaks),
      threshold: doc.threshold,
      events,
      seed: state.example ? state.example.seed : null,
    });
    showPeaks(res.peaks, events);
    const card = state.models.get(doc.model.name);
    if (!card || card.version !== doc.model.version) loadModels(); // loaded or reloaded since
    el.result.scrollIntoView({ block: "nearest" }); // focus stays on the button
  }

  function showResult(doc, res, n) {
    const decision = document.createElement("strong");
    decision.className = res.detected ? "decision-yes" : "decision-no";
    decision.textContent = res.detected ? "event detected" : "no event detected";
    const peaks = res.peaks.length;
    el.result.replaceChildren(
      `Probability ${res.probability.toFixed(3)}: `,
      decision,
      ` (threshold ${doc.threshold}). ${peaks} peak${peaks === 1 ? "" : "s"}` +
        (peaks ? ` at ${res.peaks.slice(0, LISTED_PEAKS).map((p) => p.index).join(", ")}` : "") +
        (peaks > LISTED_PEAKS ? ` and ${peaks - LISTED_PEAKS} more` : "") +
        `. Model ${doc.model.name} ${doc.model.version}, ${n} samples.`,
    );
  }

  // A threshold near 0 finds a peak at most local maxima: tens of thousands on a long signal.
  // The result line lists the first few, the table and the chart the most probable (their
  // rows and markers took seconds to build); the API's answer holds them all.
  const LISTED_PEAKS = 20;
  const SHOWN_PEAKS = 1000;

  function shownPeaks(peaks) {
    if (peaks.length <= SHOWN_PEAKS) return peaks;
    const top = [...peaks].sort((a, b) => b.probability - a.probability || a.index - b.index);
    return top.slice(0, SHOWN_PEAKS).sort((a, b) => a.index - b.index);
  }

  function showPeaks(peaks, events) {
    const body = el.peaks.tBodies[0];
    body.replaceChildren();
    const shown = shownPeaks(peaks);
    el.peaks.caption.textContent =
      shown.length < peaks.length
        ? `Detected peaks: the ${shown.length} most probable of ${peaks.length}, by sample index ` +
          "(the API's answer holds them all)"
        : "Detected peaks";
    for (const p of shown) {
      const row = body.insertRow();
      row.insertCell().textContent = String(p.index);
      row.insertCell().textContent = p.probability.toFixed(3);
      let nearest = "—";
      if (events && events.length) {
        const e = events.reduce((a, b) => (Math.abs(b - p.index) < Math.abs(a - p.index) ? b : a));
        nearest = `${e} (${p.index - e >= 0 ? "+" : ""}${p.index - e})`;
      }
      row.insertCell().textContent = nearest;
    }
    el.peaks.hidden = peaks.length === 0;
  }

  // ---------------------------------------------------------------------------------------
  // The chart: signal on top, score curve (0..1) below, on a shared sample axis.

  function svg(name, attrs, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (parent) parent.append(node);
    return node;
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  // Min and max per pixel column: long signals stay sharp and the path stays small.
  function linePoints(ys, x, y, width) {
    const n = ys.length;
    const pts = [];
    if (n <= 2 * width) {
      for (let i = 0; i < n; i++) pts.push(`${x(i).toFixed(1)},${y(ys[i]).toFixed(1)}`);
      return pts.join(" ");
    }
    const per = n / width;
    for (let c = 0; c < width; c++) {
      const a = Math.floor(c * per);
      const b = Math.min(n, Math.floor((c + 1) * per));
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = a; i < b; i++) {
        if (ys[i] < lo) lo = ys[i];
        if (ys[i] > hi) hi = ys[i];
      }
      const px = x((a + b - 1) / 2).toFixed(1);
      pts.push(`${px},${y(lo).toFixed(1)}`, `${px},${y(hi).toFixed(1)}`);
    }
    return pts.join(" ");
  }

  function fmt(v) {
    return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : String(Number(v.toPrecision(4)));
  }

  function draw(spec) {
    state.drawn = spec;
    el.figure.hidden = false;
    const root = el.chart;
    for (const child of Array.from(root.childNodes)) if (child !== el.chartTitle) child.remove();
    const W = Math.max(240, Math.floor(el.chartBox.clientWidth));
    const narrow = W < 520;
    const H = narrow ? 300 : 380;
    root.setAttribute("viewBox", `0 0 ${W} ${H}`);
    root.setAttribute("width", String(W));
    root.setAttribute("height", String(H));
    root.dataset.trueEvents = spec.events ? spec.events.join(",") : "";
    root.dataset.seed = spec.seed === null || spec.seed === undefined ? "" : String(spec.seed);
    root.dataset.samples = String(spec.values.length);

    const left = narrow ? 40 : 52;
    const right = 8;
    const top = 16;
    const bottom = 30;
    const gap = 22;
    const plotW = W - left - right;
    const hasScores = Array.isArray(spec.scores);
    const total = H - top - bottom - (hasScores ? gap : 0);
    const sigH = hasScores ? Math.round(total * 0.56) : total;
    const scoreTop = top + sigH + gap;
    const scoreH = total - sigH;
    const n = spec.values.length;
    const x = (i) => left + (n > 1 ? (i / (n - 1)) * plotW : plotW / 2);

    let lo = Infinity;
    let hi = -Infinity;
    for (const v of spec.values) {
      if (!Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (lo === Infinity) {
      lo = 0;
      hi = 1;
    }
    if (hi === lo) {
      hi += 1;
      lo -= 1;
    }
    const pad = (hi - lo) * 0.06;
    lo -= pad;
    hi += pad;
    const ySig = (v) => top + sigH - ((v - lo) / (hi - lo)) * sigH;
    const yScore = (v) => scoreTop + scoreH - v * scoreH;

    const axes = svg("g", { class: "axes" }, root);
    const panel = (y0, h, ticks, yOf, label) => {
      for (const t of ticks) {
        svg("line", { class: "grid", x1: left, x2: left + plotW, y1: yOf(t), y2: yOf(t) }, axes);
        const text = svg("text", { x: left - 5, y: yOf(t) + 4, "text-anchor": "end" }, axes);
        text.textContent = fmt(t);
      }
      svg("rect", { class: "axis", x: left, y: y0, width: plotW, height: h }, axes);
      const name = svg("text", { class: "label", x: left + 4, y: y0 - 4 }, axes);
      name.textContent = label;
    };
    panel(top, sigH, niceTicks(lo, hi, narrow ? 3 : 4), ySig, "signal");
    if (hasScores) panel(scoreTop, scoreH, [0, 0.5, 1], yScore, "score");
    const xTicks = niceTicks(0, n - 1, narrow ? 4 : 8).filter((t) => Number.isInteger(t));
    for (const t of xTicks) {
      const text = svg("text", { x: x(t), y: H - bottom + 14, "text-anchor": "middle" }, axes);
      text.textContent = String(t);
    }
    const xlabel = svg("text", { x: left + plotW, y: H - 2, "text-anchor": "end" }, axes);
    xlabel.textContent = "sample";

    const yBottom = hasScores ? scoreTop + scoreH : top + sigH;
    svg("polyline", { class: "signal", points: linePoints(spec.values.map((v) => (Number.isFinite(v) ? v : 0)), x, ySig, plotW) }, root);
    if (hasScores) {
      svg("polyline", { class: "score", points: linePoints(spec.scores, x, yScore, plotW) }, root);
      const t = spec.threshold;
      if (typeof t === "number") {
        svg("line", { class: "threshold", x1: left, x2: left + plotW, y1: yScore(t), y2: yScore(t) }, root);
      }
      for (const p of spec.peaks) {
        const g = svg("g", {
          class: "peak",
          "data-testid": "peak",
          "data-index": p.index,
          "data-probability": p.probability,
        }, root);
        svg("title", {}, g).textContent = `Peak at sample ${p.index}, probability ${p.probability.toFixed(3)}`;
        const px = x(p.index);
        svg("line", { x1: px, x2: px, y1: top, y2: yBottom }, g);
        const py = yScore(p.probability);
        svg("path", { d: `M${px - 6},${py - 11}h12l-6,10z` }, g);
        svg("rect", { class: "hit", x: px - 7, y: top, width: 14, height: yBottom - top }, g);
      }
    }
    // True events last: dashed, on top of a peak at the same sample, so both stay visible.
    if (spec.events) {
      for (const c of spec.events) {
        const g = svg("g", { class: "event", "data-testid": "true-event", "data-index": c }, root);
        svg("title", {}, g).textContent = `True event centred at sample ${c}`;
        svg("line", { x1: x(c), x2: x(c), y1: top, y2: yBottom }, g);
        const yb = top + sigH;
        svg("path", { d: `M${x(c) - 5},${yb}l5,-8l5,8z` }, g);
      }
    }
    const peaks = spec.peaks.map((p) => p.index);
    el.chartTitle.textContent =
      `Chart of a signal of ${n} samples` +
      (hasScores ? ` with its score curve; ${peaks.length} detected peaks${peaks.length ? ` at ${peaks.join(", ")}` : ""}` : "") +
      (spec.events ? `; true events at ${spec.events.join(", ")}` : "") +
      ".";
  }

  let resizeFrame = 0;
  function onResize() {
    if (!state.drawn || resizeFrame) return;
    resizeFrame = window.requestAnimationFrame(() => {
      resizeFrame = 0;
      draw(state.drawn);
    });
  }

  // ---------------------------------------------------------------------------------------

  el.example.addEventListener("click", onExample);
  el.form.addEventListener("submit", onRun);
  el.file.addEventListener("change", onFile);
  el.model.addEventListener("change", () => showModel());
  el.key.addEventListener("change", loadModels);
  el.values.addEventListener("paste", onPaste);
  el.values.addEventListener("input", () => {
    state.edits += 1;
    state.example = null; // edited by hand: the generated events no longer apply
    countWhenTypingPauses();
  });
  window.addEventListener("resize", onResize);
  loadModels();
})();
