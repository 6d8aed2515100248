// The `Chat` class of `ai` without a UI framework: AbstractChat (what @ai-sdk/react's Chat and
// useChat build on) over a plain state object that calls `onChange` after each update. Shared by
// ai_sdk_client.mjs (Node) and the Chromium page (bundled with esbuild).
export function chatClass(AbstractChat) {
  class State {
    constructor(messages, onChange) {
      this.onChange = onChange;
      this.status = "ready";
      this.error = undefined;
      this.messages = messages;
    }
    pushMessage = (message) => {
      this.messages = [...this.messages, message];
    };
    popMessage = () => {
      this.messages = this.messages.slice(0, -1);
    };
    replaceMessage = (index, message) => {
      this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
    };
    snapshot = (thing) => structuredClone(thing);
  }
  // AbstractChat assigns status, error and messages as plain fields: each change is reported.
  for (const name of ["status", "error", "messages"]) {
    Object.defineProperty(State.prototype, name, {
      get() {
        return this[`_${name}`];
      },
      set(value) {
        this[`_${name}`] = value;
        this.onChange?.(name);
      },
    });
  }
  return class Chat extends AbstractChat {
    constructor({ messages = [], onChange, ...init }) {
      super({ ...init, state: new State(messages, onChange) });
    }
  };
}
