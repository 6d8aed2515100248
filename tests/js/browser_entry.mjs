// What the Chromium page imports, bundled by esbuild: the Chat class of `ai` (AbstractChat over a
// plain state, chat.mjs) and its DefaultChatTransport. No React, as the page is plain DOM.
import { AbstractChat, DefaultChatTransport } from "ai";
import { chatClass } from "./chat.mjs";

export const Chat = chatClass(AbstractChat);
export { DefaultChatTransport };
