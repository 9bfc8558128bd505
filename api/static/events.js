// Server-Sent Events over fetch streaming (EventSource cannot POST), shared by the playground
// and the studio.
"use strict";

// Reads `event:`/`data:` blocks from a fetch body as they arrive; yields {event, data, id}.
async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", data: "" };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = line.slice(0, colon), value = line.slice(colon + 1).replace(/^ /, "");
        if (name === "data") event.data += value; else event[name] = value;
      }
      if (event.data) yield event;
    }
  }
}
