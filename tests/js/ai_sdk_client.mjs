// The AI SDK's own client code against the bridge, as useChat runs it: DefaultChatTransport,
// readUIMessageStream and the Chat class of the `ai` package given by `sdk` (an alias in
// package.json: "ai" is the latest release, "ai5" the latest 5.x, "ai50" 5.0.0 with its strict
// chunk schema). Usage: node ai_sdk_client.mjs SPEC_JSON; prints the result as JSON.
//
// SPEC: {sdk, api, mode, chatId, body, headers, text, after, output}
//   mode "chat":   send one user message, assemble the answer with readUIMessageStream;
//   mode "stop":   Chat.sendMessage, then Chat.stop() once `after` characters of text arrived;
//   mode "resume": send, drop the connection after `after` text deltas, then a new Chat with the
//                  user's message calls resumeStream() (useChat({resume: true}) on a reload);
//   mode "tools":  Chat runs the tool it is asked to call, with `output` as its result, and
//                  sends that back by itself; the answer follows in the same message;
//   mode "reconnect": DefaultChatTransport.reconnectToStream alone (null means 204).
import { chatClass } from "./chat.mjs";

const spec = JSON.parse(process.argv[2]);
const ai = await import(spec.sdk);
const transport = new ai.DefaultChatTransport({ api: spec.api, body: spec.body, headers: spec.headers });
const Chat = chatClass(ai.AbstractChat);
const userMessage = { id: "user-1", role: "user", parts: [{ type: "text", text: spec.text ?? "hi" }] };

function summary(message) {
  const parts = message?.parts ?? [];
  const join = (type) => parts.filter((part) => part.type === type).map((part) => part.text).join("");
  return {
    id: message?.id ?? null,
    text: join("text"),
    reasoning: join("reasoning"),
    partTypes: parts.map((part) => part.type),
    states: parts.filter((part) => "state" in part).map((part) => part.state),
    tools: parts
      .filter((part) => part.type.startsWith("tool-") || part.type === "dynamic-tool")
      .map(({ type, toolCallId, state, input }) => ({ type, toolCallId, state, input })),
    metadata: message?.metadata ?? null,
  };
}

// Every chunk type, in order, then the assembled message; errors as the SDK reports them.
async function assemble(stream) {
  const chunks = [];
  const errors = [];
  const tapped = stream.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        chunks.push(chunk.type);
        controller.enqueue(chunk);
      },
    }),
  );
  let message;
  try {
    for await (const snapshot of ai.readUIMessageStream({
      stream: tapped,
      onError: (error) => errors.push(String(error?.message ?? error)),
    })) {
      message = snapshot;
    }
  } catch (error) {
    errors.push(String(error?.message ?? error));
  }
  return { ...summary(message), chunks, errors };
}

function send(abortSignal) {
  return transport.sendMessages({
    chatId: spec.chatId,
    messages: [userMessage],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal,
  });
}

async function chat() {
  let stream;
  try {
    stream = await send(undefined);
  } catch (error) {
    return { requestError: String(error.message), status: error.statusCode ?? null };
  }
  return assemble(stream);
}

// The characters of text the chat's assistant message holds so far.
function textCount(chat) {
  const last = chat.messages.at(-1);
  if (last?.role !== "assistant") return 0;
  return summary(last).text.length;
}

async function stop() {
  const errors = [];
  let resolveSeen;
  const seen = new Promise((resolve) => (resolveSeen = resolve));
  let chat = null;
  chat = new Chat({
    id: spec.chatId,
    transport,
    onError: (error) => errors.push(String(error.message)),
    onChange: () => {
      if (chat !== null && textCount(chat) >= spec.after) resolveSeen();
    },
  });
  const sending = chat.sendMessage({ text: spec.text ?? "hi" });
  await seen;
  const stoppedAt = Date.now();
  await chat.stop();
  await sending;
  return { stoppedAt, status: chat.status, error: chat.error?.message ?? null, errors, ...summary(chat.messages.at(-1)) };
}

async function resume() {
  const controller = new AbortController();
  const stream = await send(controller.signal);
  const reader = stream.getReader();
  let deltas = 0;
  const before = [];
  while (deltas < spec.after) {
    const { done, value } = await reader.read();
    if (done) break;
    before.push(value.type);
    if (value.type === "text-delta") deltas += 1;
  }
  // The page goes away: the connection drops mid-answer.
  controller.abort();
  await reader.cancel().catch(() => {});
  const errors = [];
  const chat = new Chat({
    id: spec.chatId,
    transport,
    messages: [userMessage],
    onError: (error) => errors.push(String(error.message)),
  });
  await chat.resumeStream();
  return { before, status: chat.status, errors, messages: chat.messages.length, ...summary(chat.messages.at(-1)) };
}

// The page runs the tool (onToolCall adds its output), and the SDK sends the result back by
// itself (sendAutomaticallyWhen): the answer to it lands in the same assistant message.
async function tools() {
  const errors = [];
  let chat = null;
  let answered;
  const done = new Promise((resolve) => (answered = resolve));
  chat = new Chat({
    id: spec.chatId,
    transport,
    onError: (error) => errors.push(String(error.message)),
    sendAutomaticallyWhen: ai.lastAssistantMessageIsCompleteWithToolCalls,
    onToolCall: ({ toolCall }) => {
      // Not awaited, as the SDK's docs say: the output is added once the stream has ended.
      (chat.addToolOutput ?? chat.addToolResult)({
        tool: toolCall.toolName,
        toolCallId: toolCall.toolCallId,
        output: spec.output,
      });
    },
    onChange: () => {
      if (chat !== null && chat.status === "ready" && textCount(chat) > 0) answered();
      if (chat !== null && chat.status === "error") answered();
    },
  });
  await chat.sendMessage({ text: spec.text ?? "hi" });
  await done;
  const roles = chat.messages.map((message) => message.role);
  return { status: chat.status, errors, roles, ...summary(chat.messages.at(-1)) };
}

async function reconnect() {
  const stream = await transport.reconnectToStream({ chatId: spec.chatId });
  return stream === null ? { none: true } : { none: false, ...(await assemble(stream)) };
}

const modes = { chat, stop, resume, tools, reconnect };
process.stdout.write(JSON.stringify(await modes[spec.mode]()));
