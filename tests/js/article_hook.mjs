// The browser hook of "Streaming Ollama Responses in Next.js: The SSE Pattern That Actually Works"
// (useOllamaGenerator), with React's state replaced by a plain object and the URL and request body
// taken from the command line. The parsing loop is kept exactly as the article writes it: split on
// "\n\n", skip a block unless it starts with "data: ", JSON-parse the rest, read `token` and
// `finished`. Usage: node article_hook.mjs URL BODY_JSON; prints the final state as JSON.
const [url, body] = process.argv.slice(2);
let state = { output: "", isGenerating: false, error: null, tokens: 0 };
const setState = (update) => {
  state = typeof update === "function" ? update(state) : update;
};

async function generate() {
  setState({ output: "", isGenerating: true, error: null, tokens: 0 });
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body,
    });
    if (!response.body) throw new Error("Response body is missing");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const segments = buffer.split("\n\n");
      buffer = segments.pop() ?? "";
      for (const segment of segments) {
        if (!segment.startsWith("data: ")) continue;
        try {
          const event = JSON.parse(segment.slice(6));
          if (event.token) {
            setState((prev) => ({ ...prev, output: prev.output + event.token, tokens: prev.tokens + 1 }));
          }
          if (event.finished) {
            setState((prev) => ({ ...prev, isGenerating: false }));
          }
          // Not in the article's hook, which drops errors: recorded so the test can see them.
          if (event.error) {
            setState((prev) => ({ ...prev, error: event.error }));
          }
        } catch {
          // Ignore malformed SSE payloads
        }
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") {
      setState((prev) => ({ ...prev, isGenerating: false, error: err.message }));
    }
  }
}

await generate();
console.log(JSON.stringify(state));
