// Drives Chatify's UI message stream with the AI SDK's own transport and reader, as useChat
// does: `send` posts a user message and rebuilds the reply; `resume` reconnects to the turn in
// flight (null on 204). Prints one JSON line per rebuilt message state, then {"done": ...}.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [command, base, sessionId, messageId, text] = process.argv.slice(2);
const transport = new DefaultChatTransport({ api: `${base}/api/v1/chatbot/chat` });

const stream =
  command === "send"
    ? await transport.sendMessages({
        chatId: sessionId,
        messages: [{ id: messageId, role: "user", parts: [{ type: "text", text }] }],
        trigger: "submit-message",
        messageId: undefined,
        abortSignal: undefined,
      })
    : await transport.reconnectToStream({ chatId: sessionId });

if (stream === null) {
  console.log(JSON.stringify({ done: null }));
} else {
  let last = null;
  for await (const message of readUIMessageStream({ stream })) {
    last = message;
    console.log(JSON.stringify({ state: message.parts.map((p) => p.text ?? null) }));
  }
  const reply = last.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
  const tools = last.parts
    .filter((p) => p.type === "dynamic-tool")
    .map((p) => ({ name: p.toolName, state: p.state, input: p.input, output: p.output ?? null, errorText: p.errorText ?? null }));
  console.log(JSON.stringify({ done: { id: last.id, role: last.role, reply, metadata: last.metadata, tools } }));
}
