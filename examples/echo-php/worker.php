<?php

// The echo example in PHP, behaving exactly like examples/echo (Rust):
// replies to each text message with `<prefix><message>`.
//
// - The prefix is read once, at worker start, from the file named by
//   ECHO_PREFIX_FILE (default `v1:` when unset). Changing the file and
//   reloading is the smallest possible "new code" for reload tests.
// - `sleep:<ms>:<rest>` is answered with `<prefix><rest>` after <ms>
//   milliseconds: simulated in-flight work (Ctx::sleep, so other
//   connections are served meanwhile).
// - A reply to a redelivered event (its first worker died before finishing)
//   starts with `[redelivered]`, so tests can tell which answers may repeat.
// - A handshake with `?deny=1` is refused with 403.
// - Binary messages are echoed back unchanged.

declare(strict_types=1);

require __DIR__ . '/../../sdk/php/autoload.php';

use Hotsock\BaseApp;
use Hotsock\Ctx;
use Hotsock\Decision;
use Hotsock\Handshake;
use Hotsock\Message;
use Hotsock\Runtime;

final class EchoApp extends BaseApp
{
    public const HANDLES_HANDSHAKE = true;

    /** Longest sleep a client may ask for, so a typo cannot park a handler for hours. */
    private const SLEEP_MS_MAX = 60_000;

    private string $prefix = '';

    public function onWorkerStart(Ctx $ctx, ?string $handoff): void
    {
        $path = getenv('ECHO_PREFIX_FILE');
        if ($path === false) {
            $this->prefix = 'v1:';
            return;
        }
        $text = @file_get_contents($path);
        if ($text === false) {
            $error = error_get_last()['message'] ?? 'unreadable';
            throw new RuntimeException("cannot read ECHO_PREFIX_FILE {$path}: {$error}");
        }
        $this->prefix = rtrim($text, "\r\n");
    }

    public function onHandshake(Ctx $ctx, Handshake $handshake): Decision
    {
        if ($handshake->request->query('deny') === '1') {
            return Decision::reject(403, "denied by the echo example (?deny=1)\n");
        }
        return Decision::accept();
    }

    public function onMessage(Ctx $ctx, Message $message): void
    {
        $text = $message->text();
        if ($text === null) {
            $ctx->push($message->conn, $message->data, binary: true);
            return;
        }
        $body = $text;
        if (preg_match('/^sleep:([0-9]+):(.*)$/s', $text, $m) === 1) {
            $ctx->sleep(min((int) $m[1], self::SLEEP_MS_MAX));
            $body = $m[2];
        }
        $mark = $message->redelivered ? '[redelivered]' : '';
        $ctx->push($message->conn, $mark . $this->prefix . $body);
    }
}

Runtime::run(new EchoApp());
