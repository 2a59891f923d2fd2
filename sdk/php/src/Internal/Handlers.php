<?php

declare(strict_types=1);

namespace Hotsock\Internal;

use Hotsock\App;
use Hotsock\Ctx;
use Hotsock\Decision;
use Hotsock\Finish;
use Hotsock\Handshake;
use Hotsock\Message;
use Hotsock\Open;
use Hotsock\Close;
use Hotsock\Join;
use Hotsock\Leave;
use Hotsock\Task;

/**
 * Calls the app for one event and sends what the event itself requires
 * (the HandshakeReply, the TaskDone). A handler that throws is caught
 * here: logged, reported with a Panicked frame, and the worker keeps
 * serving; the caller acknowledges the event either way.
 */
final class Handlers
{
    /** Longest error message sent to the server; the full one is in the log. */
    private const PANIC_MESSAGE_MAX_BYTES = 1024;

    public function __construct(private readonly App $app, private readonly Ctx $ctx, private readonly Outbox $out)
    {
    }

    public function event(Event $event): void
    {
        $payload = $event->payload;
        try {
            match (true) {
                $payload instanceof Handshake => $this->handshake($payload, $this->app->onHandshake($this->ctx, $payload)),
                $payload instanceof Open => $this->app->onOpen($this->ctx, $payload),
                $payload instanceof Message => $this->app->onMessage($this->ctx, $payload),
                $payload instanceof Close => $this->app->onClose($this->ctx, $payload),
                $payload instanceof Task => $this->out->frame(Kind::TASK_DONE, 0, $payload->id, 0, $this->app->onTask($this->ctx, $payload)),
                $payload instanceof Join => $this->app->onJoin($this->ctx, $payload),
                $payload instanceof Leave => $this->app->onLeave($this->ctx, $payload),
            };
        } catch (\Throwable $error) {
            $message = self::describe($error);
            Log::line("handler failed (conn {$event->lane}, event {$event->id}): {$message}");
            $this->out->frame(Kind::PANICKED, 0, $event->lane, $event->id, self::cut($message));
            if ($payload instanceof Handshake) {
                $this->handshake($payload, Decision::reject(500, 'handshake handler failed'));
            }
            if ($payload instanceof Task) {
                // The dispatcher gets the failure instead of waiting forever.
                $this->out->frame(Kind::TASK_DONE, Kind::FAILED, $payload->id, 0, self::cut($message));
            }
        }
    }

    public function finish(Finish $finish): void
    {
        try {
            $this->app->onFinish($this->ctx, $finish);
        } catch (\Throwable $error) {
            Log::line("onFinish failed (task {$finish->task}): " . self::describe($error));
        }
    }

    private function handshake(Handshake $handshake, Decision $decision): void
    {
        $this->out->frame(Kind::HANDSHAKE_REPLY, 0, $handshake->conn, 0, $decision->encode());
    }

    public static function describe(\Throwable $error): string
    {
        return sprintf('%s: %s at %s:%d', $error::class, $error->getMessage(), $error->getFile(), $error->getLine());
    }

    /** At most PANIC_MESSAGE_MAX_BYTES, cut at a UTF-8 boundary (the server reads it as UTF-8, lossy). */
    private static function cut(string $message): string
    {
        if (strlen($message) <= self::PANIC_MESSAGE_MAX_BYTES) {
            return $message;
        }
        $cut = substr($message, 0, self::PANIC_MESSAGE_MAX_BYTES);
        // Drop a trailing partial character: continuation bytes are 10xxxxxx.
        return preg_replace('/[\xC0-\xFF][\x80-\xBF]*$/', '', $cut) ?? $cut;
    }
}
