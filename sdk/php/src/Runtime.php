<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\Decoder;
use Hotsock\Internal\Frame;
use Hotsock\Internal\Handlers;
use Hotsock\Internal\Hello;
use Hotsock\Internal\Kind;
use Hotsock\Internal\Log;
use Hotsock\Internal\Outbox;
use Hotsock\Internal\ParentWatch;
use Hotsock\Internal\Scheduler;
use Hotsock\Internal\StrayOutput;
use Hotsock\Internal\Transport;

/**
 * Runs an App as a hotsock worker (docs/protocol.md, "The exchange"): the
 * table preamble, Hello, `onWorkerStart`, Ready; then the loop, each turn
 * running what can run, writing its output in one batch, and waiting for
 * the socket; Snapshot and Stop once idle. Never returns.
 */
final class Runtime
{
    public static function run(App $app): never
    {
        if (getenv('HOTSOCK_WORKER_FD') === false) {
            fwrite(STDERR, "this program is a hotsock worker: start it with `hotsock start -c <config>`, not directly\n");
            exit(1);
        }
        $stray = new StrayOutput();
        $stray->start();
        try {
            ParentWatch::arm();
            $transport = Transport::fromStdin();
            $tableFiles = $transport->receivePreamble();
            $decoder = new Decoder();
            $hello = self::readHello($transport, $decoder);
            if ($hello->protocolVersion !== Kind::PROTOCOL_VERSION) {
                // Answer anyway, so the server names both versions instead of timing out.
                $transport->write(self::ready(0));
                Log::line(sprintf(
                    'the server speaks protocol version %d, this PHP SDK speaks %d; use a matching sdk/php',
                    $hello->protocolVersion,
                    Kind::PROTOCOL_VERSION,
                ));
                exit(1);
            }
            if (count($tableFiles) !== count($hello->tables)) {
                throw new ProtocolError(sprintf('%d table descriptors for %d declared tables', count($tableFiles), count($hello->tables)));
            }
            $out = new Outbox($transport);
            $scheduler = new Scheduler($transport, $decoder, $out, max(1, $hello->maxConcurrency));
            $ctx = new Ctx($scheduler, $out, $hello, $tableFiles);
            $scheduler->attach(new Handlers($app, $ctx, $out));
            try {
                $app->onWorkerStart($ctx, $hello->handoff);
            } catch (\Throwable $error) {
                // Ready means "this code started": a failed start never takes traffic.
                Log::line('onWorkerStart failed: ' . Handlers::describe($error));
                exit(1);
            }
            $stray->drain();
            $out->flush();
            $transport->write(self::ready(self::capabilities($app)));
            self::serve($app, $ctx, $scheduler, $out, $stray);
        } catch (Disconnected) {
            // The server is gone; nothing computed here can reach anyone.
            exit(0);
        } catch (ProtocolError $error) {
            Log::line('protocol error: ' . $error->getMessage());
            exit(1);
        }
    }

    private static function serve(App $app, Ctx $ctx, Scheduler $scheduler, Outbox $out, StrayOutput $stray): never
    {
        $stoppedOnce = false;
        while (true) {
            $scheduler->turn();
            if ($scheduler->idle() && $scheduler->snapshotRequested) {
                $scheduler->snapshotRequested = false;
                $scheduler->eventSinceStop = false;
                $stoppedOnce = true;
                // Empty: no state for the successor.
                $out->frame(Kind::HANDOFF, 0, 0, 0, self::stopOnce($app, $ctx) ?? '');
            }
            if ($scheduler->idle() && $scheduler->stopRequested) {
                // A Snapshot already ran onWorkerStop, unless events came since (the worker was resumed).
                if (!$stoppedOnce || $scheduler->eventSinceStop) {
                    self::stopOnce($app, $ctx);
                }
                $stray->drain();
                $scheduler->flush();
                exit(0);
            }
            $scheduler->flush();
            $stray->drain();
            $scheduler->pump($scheduler->timeout());
        }
    }

    private static function stopOnce(App $app, Ctx $ctx): ?string
    {
        try {
            return $app->onWorkerStop($ctx);
        } catch (\Throwable $error) {
            Log::line('onWorkerStop failed: ' . Handlers::describe($error));
            return null;
        }
    }

    private static function readHello(Transport $transport, Decoder $decoder): Hello
    {
        while (true) {
            $frame = $decoder->next();
            if ($frame !== null) {
                if ($frame->kind !== Kind::HELLO) {
                    throw new ProtocolError(sprintf('expected Hello from the server, got kind 0x%02x', $frame->kind));
                }
                return Hello::decode($frame->payload);
            }
            $bytes = $transport->read(null);
            if ($bytes !== null) {
                $decoder->feed($bytes);
            }
        }
    }

    private static function ready(int $capabilities): string
    {
        return Frame::encode(Kind::READY, 0, 0, 0, pack('vV', Kind::PROTOCOL_VERSION, $capabilities));
    }

    private static function capabilities(App $app): int
    {
        return ($app::HANDLES_HANDSHAKE ? Kind::CAP_HANDSHAKE : 0)
            | ($app::HANDOFF ? Kind::CAP_HANDOFF : 0)
            | ($app::CHANNEL_EVENTS ? Kind::CAP_CHANNEL_EVENTS : 0);
    }
}
