// Training examples from an uploaded file or pasted text, checked row by row before
// anything is sent. The rules and messages are the CLI's (tunesmith/cli/dataset.py):
// JSONL has one {"text_input", "output"} object per line (`input` for `text_input` too);
// CSV has two columns, input then output, and an optional header row.

// The server's limits (tunesmith/domain/validation.py).
const MAX_INPUT_CHARS = 40_000;
const MAX_OUTPUT_CHARS = 5_000;
const MAX_EXAMPLES = 100_000;
const INPUT_KEYS = ["text_input", "input", "textInput"];
export const SHOWN_PROBLEMS = 20;

/**
 * Parses a dataset. Answers {format, examples: [{textInput, output, line}],
 * problems: [{line, message}]}; `line` counts from 1 where the example starts.
 */
export function parseExamples(text, fileName = "") {
  const body = text.replace(/^\uFEFF/, "");
  const format = isCsv(body, fileName) ? "CSV" : "JSONL";
  const rows = format === "CSV" ? csvRows(body) : jsonlRows(body);
  const examples = [];
  const problems = [];
  for (const { line, value, problem } of rows) {
    const trouble = problem ?? check(value);
    if (trouble) problems.push({ line, message: trouble });
    else examples.push({ textInput: value[0], output: value[1], line });
  }
  if (!problems.length && !examples.length) {
    problems.push({ line: null, message: "there are no examples" });
  }
  if (examples.length > MAX_EXAMPLES) {
    problems.push({
      line: null,
      message: `${examples.length} examples; at most ${MAX_EXAMPLES} are allowed`,
    });
  }
  return { format, examples, problems };
}

/** The file's text, or the line where it stops being UTF-8. */
export async function readUtf8(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  try {
    return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes) };
  } catch {
    const decoder = new TextDecoder("utf-8", { fatal: true });
    let line = 1;
    let start = 0;
    for (let i = 0; i <= bytes.length; i++) {
      if (i < bytes.length && bytes[i] !== 0x0a) continue;
      try {
        decoder.decode(bytes.subarray(start, i));
      } catch {
        return { problem: { line, message: "the file is not UTF-8 text" } };
      }
      line += 1;
      start = i + 1;
    }
    return { problem: { line: null, message: "the file is not UTF-8 text" } };
  }
}

function isCsv(text, fileName) {
  const name = fileName.toLowerCase();
  if (name.endsWith(".csv")) return true;
  if ([".jsonl", ".json", ".ndjson"].some((suffix) => name.endsWith(suffix))) return false;
  return !text.trimStart().startsWith("{");
}

function jsonlRows(text) {
  if (text.trimStart().startsWith("[")) {
    return [{ line: 1, problem: "this is a JSON array; JSONL needs one JSON object per line" }];
  }
  const rows = [];
  text.split(/\r?\n/).forEach((line, index) => {
    if (line.trim()) rows.push({ line: index + 1, ...jsonRow(line) });
  });
  return rows;
}

function jsonRow(line) {
  let value;
  try {
    value = JSON.parse(line);
  } catch (error) {
    return { problem: `not valid JSON (${error.message})` };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { problem: `expected a JSON object with text_input and output, got ${kind(value)}` };
  }
  const unknown = Object.keys(value).filter((key) => key !== "output" && !INPUT_KEYS.includes(key));
  if (unknown.length) {
    return { problem: `unknown field '${unknown[0]}'; expected text_input (or input) and output` };
  }
  const inputs = INPUT_KEYS.filter((key) => key in value);
  if (inputs.length > 1) return { problem: `has both '${inputs[0]}' and '${inputs[1]}'; give one` };
  if (!("output" in value)) return { problem: "missing 'output'" };
  for (const key of [...inputs, "output"]) {
    if (typeof value[key] !== "string")
      return { problem: `'${key}' must be a string, got ${kind(value[key])}` };
  }
  return { value: [inputs.length ? value[inputs[0]] : "", value.output] };
}

function kind(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  return { object: "an object", string: "a string", boolean: "true/false" }[typeof value] ?? "a number";
}

/** RFC 4180 records with the line each starts on; quoted fields may hold commas and newlines. */
function csvRecords(text) {
  const records = [];
  let record = [];
  let field = "";
  let quoted = false;
  let line = 1;
  let recordLine = 1;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (quoted) {
      if (char === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (char === '"') {
        quoted = false;
      } else {
        if (char === "\n") line++;
        field += char;
      }
    } else if (char === '"' && field === "") {
      quoted = true;
    } else if (char === ",") {
      record.push(field);
      field = "";
    } else if (char === "\n" || char === "\r") {
      if (char === "\r" && text[i + 1] === "\n") i++;
      record.push(field);
      records.push({ line: recordLine, cells: record });
      record = [];
      field = "";
      line++;
      recordLine = line;
    } else {
      field += char;
    }
  }
  if (quoted) return { records, unclosedAt: recordLine };
  if (field !== "" || record.length) {
    record.push(field);
    records.push({ line: recordLine, cells: record });
  }
  return { records };
}

function csvRows(text) {
  const { records, unclosedAt } = csvRecords(text);
  const rows = [];
  for (const { line, cells } of records) {
    if (!cells.some((cell) => cell.trim())) continue;
    if (!rows.length && isHeader(cells)) continue;
    rows.push(
      cells.length === 2
        ? { line, value: cells }
        : { line, problem: `expected 2 columns (input, output), got ${cells.length}` },
    );
  }
  if (unclosedAt) rows.push({ line: unclosedAt, problem: "not valid CSV (a quoted field is never closed)" });
  return rows;
}

function isHeader(cells) {
  return (
    cells.length === 2 &&
    INPUT_KEYS.some((key) => key.toLowerCase() === cells[0].trim().toLowerCase()) &&
    cells[1].trim().toLowerCase() === "output"
  );
}

/** Whether `text` has more than `limit` characters (code points, as the server counts). */
function longerThan(text, limit) {
  // The UTF-16 length is never below the character count: count only when it matters.
  return text.length > limit && [...text].length > limit;
}

function check([textInput, output]) {
  if (!output) return "the output is empty";
  if (longerThan(textInput, MAX_INPUT_CHARS)) return `the input is longer than ${MAX_INPUT_CHARS} characters`;
  if (longerThan(output, MAX_OUTPUT_CHARS)) return `the output is longer than ${MAX_OUTPUT_CHARS} characters`;
  return null;
}
