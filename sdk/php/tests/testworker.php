<?php

// A PHP worker for tests: SDK calls behind text commands, as the Rust
// hotsock-testworker (a subset with the same names and answers).
//
// Text commands: `echo:X`, `seq:N`, `binary:X`, `bind:UID`, `to_uid:UID:X`,
// `broadcast:X`, `info`, `list`, `close:CODE:REASON`, `panic` (throws),
// `exit` (exit code 3), `sleep:MS:X` (Ctx::sleep), `block:MS` (usleep:
// holds the loop), `stray:X` (prints to stdout, then answers X), `sub:CH`,
// `pub:CH:X`, `pubr:CH:X`, `members:CH`, `channels`, `presence:UID`, `task:X`,
// `remember:X` / `recall` (state handed to the slot's next worker),
// `tables` (the declared tables' names and how many descriptors came),
// `tincr:KEY` / `tget:KEY` (column `n` of table `counters`, as the Rust
// test worker), `tops` (every table operation on table `kinds`, answered
// as JSON), `tbench:N` (N increments of `counters`, answered `N ops in US us`),
// `tpost:N` (N `setLater`s of new keys into `counters`, never settled:
// answered `posted N`; any refusal belongs to that handler alone).
// `onOpen` pushes `open CONN slot=S`. Tasks answer `done:X`; `panic` throws.

declare(strict_types=1);

require __DIR__ . '/../autoload.php';

use Hotsock\BaseApp;
use Hotsock\ChannelError;
use Hotsock\Ctx;
use Hotsock\Message;
use Hotsock\Open;
use Hotsock\Runtime;
use Hotsock\TableError;
use Hotsock\Task;

final class TestApp extends BaseApp
{
    public const HANDOFF = true;

    /** @var list<string> */
    private array $memory = [];

    public function onWorkerStart(Ctx $ctx, ?string $handoff): void
    {
        $this->memory = $handoff === null || $handoff === '' ? [] : explode(',', $handoff);
    }

    public function onWorkerStop(Ctx $ctx): ?string
    {
        return implode(',', $this->memory);
    }

    public function onOpen(Ctx $ctx, Open $open): void
    {
        $ctx->push($open->conn, "open {$open->conn} slot={$ctx->slot()}");
    }

    public function onTask(Ctx $ctx, Task $task): string
    {
        if ($task->payload === 'panic') {
            throw new RuntimeException('test task panic');
        }
        return "done:{$task->payload}";
    }

    public function onMessage(Ctx $ctx, Message $message): void
    {
        $conn = $message->conn;
        $mark = $message->redelivered ? '[redelivered]' : '';
        [$command, $arg] = array_pad(explode(':', $message->data, 2), 2, '');
        switch ($command) {
            case 'echo':
                $ctx->push($conn, $mark . $arg);
                break;
            case 'seq':
                $ctx->push($conn, "{$mark}seq:{$arg}:slot={$ctx->slot()}");
                break;
            case 'binary':
                $ctx->push($conn, $arg, binary: true);
                break;
            case 'bind':
                $ctx->bind($conn, (int) $arg);
                $ctx->push($conn, "bound {$arg}");
                break;
            case 'to_uid':
                [$uid, $text] = explode(':', $arg, 2);
                $ctx->sendToUid((int) $uid, $text);
                break;
            case 'broadcast':
                $ctx->broadcast($arg);
                break;
            case 'info':
                $info = $ctx->connInfo($conn);
                $ctx->push($conn, $info === null ? 'none' : "conn={$info->conn} path={$info->path} uid=" . ($info->uid ?? 'none') . " slot={$info->slot}");
                break;
            case 'list':
                $ctx->push($conn, implode(',', $ctx->connections()));
                break;
            case 'close':
                [$code, $reason] = array_pad(explode(':', $arg, 2), 2, '');
                $ctx->close($conn, (int) $code, $reason);
                break;
            case 'panic':
                throw new RuntimeException("test panic requested by conn {$conn}");
            case 'exit':
                exit(3);
            case 'sleep':
                [$ms, $text] = explode(':', $arg, 2);
                $ctx->sleep((int) $ms);
                $ctx->push($conn, $mark . $text);
                break;
            case 'block':
                usleep((int) $arg * 1000);
                $ctx->push($conn, 'unblocked');
                break;
            case 'stray':
                echo "oops";
                print "oops again\n";
                var_dump(['stray' => true]);
                $ctx->push($conn, $arg);
                break;
            case 'sub':
                try {
                    $s = $ctx->subscribe($conn, $arg)->wait();
                    $ctx->push($conn, sprintf('subscribed %s recovered=%s epoch=%s offset=%d replayed=%d', $arg, $s->recovered ? 'true' : 'false', $s->position->epochHex(), $s->position->offset, $s->replayed));
                } catch (ChannelError $e) {
                    $ctx->push($conn, 'sub error: ' . $e->getMessage());
                }
                break;
            case 'pub':
            case 'pubr':
                [$channel, $body] = explode(':', $arg, 2);
                $reply = $ctx->publish($channel, $body);
                if ($command === 'pubr') {
                    try {
                        $ctx->push($conn, "published {$channel} offset={$reply->wait()->offset}");
                    } catch (ChannelError $e) {
                        $ctx->push($conn, 'pub error: ' . $e->getMessage());
                    }
                }
                break;
            case 'members':
                $ctx->push($conn, json_encode(array_map(static fn ($m) => [$m->conn, $m->uid], $ctx->members($arg)), JSON_THROW_ON_ERROR));
                break;
            case 'channels':
                $ctx->push($conn, implode(',', $ctx->channels($conn)));
                break;
            case 'presence':
                try {
                    $entries = array_map(static fn ($e) => [$e->node, $e->conns], $ctx->presence((int) $arg));
                    $ctx->push($conn, json_encode($entries, JSON_THROW_ON_ERROR));
                } catch (ChannelError $e) {
                    $ctx->push($conn, 'error ' . $e->getMessage());
                }
                break;
            case 'task':
                $ctx->push($conn, 'task result ' . $ctx->task($arg)->result());
                break;
            case 'remember':
                $this->memory[] = $arg;
                $ctx->push($conn, 'remembered');
                break;
            case 'tables':
                $ctx->push($conn, 'tables=' . implode(',', $ctx->tableNames()) . " files={$ctx->tableFileCount()}");
                break;
            case 'tincr':
            case 'tget':
                $table = $ctx->table('counters');
                if ($table === null) {
                    $ctx->push($conn, 'error: no table counters');
                    break;
                }
                try {
                    $answer = $command === 'tincr' ? (string) $table->incr($arg, 'n', 1) : (string) ($table->get($arg)['n'] ?? 'none');
                } catch (TableError $error) {
                    $answer = 'error: ' . $error->getMessage();
                }
                $ctx->push($conn, $answer);
                break;
            case 'tops':
                $ctx->push($conn, json_encode(self::tableOps($ctx), JSON_THROW_ON_ERROR | JSON_PRESERVE_ZERO_FRACTION));
                break;
            case 'tpost':
                $table = $ctx->table('counters');
                for ($n = 0; $n < (int) $arg; $n++) {
                    $table->setLater("post-{$conn}-{$n}", ['n' => $n]);
                }
                $ctx->push($conn, "posted {$arg}");
                break;
            case 'tbench':
                $table = $ctx->table('counters');
                $started = hrtime(true);
                for ($n = 0; $n < (int) $arg; $n++) {
                    $table->incr('bench', 'n', 1);
                }
                $us = intdiv(hrtime(true) - $started, 1000);
                $ctx->push($conn, "{$arg} ops in {$us} us");
                break;
            case 'recall':
                $ctx->push($conn, 'memory=' . implode(',', $this->memory));
                break;
            default:
                $ctx->push($conn, "unknown command {$command}");
        }
    }

    /** Each table operation once, and each error, as [what, result] pairs. */
    private static function tableOps(Ctx $ctx): array
    {
        $t = $ctx->table('kinds');
        $out = [];
        $try = static function (string $what, \Closure $op) use (&$out): void {
            try {
                $out[] = [$what, $op()];
            } catch (TableError $e) {
                $out[] = [$what, ['error', $e->getCode(), $e->getMessage(), $e->column, $e->value, $e->limit]];
            }
        };
        $try('missing table', static fn () => $ctx->table('nope'));
        $try('insert', static fn () => $t->insert('a', ['i' => 1, 'f' => 0.5, 's' => 'ab']));
        $try('insert again', static fn () => $t->insert('a', ['i' => 2]));
        $try('get', static fn () => $t->get('a'));
        $try('get none', static fn () => $t->get('zz'));
        $try('set', static fn () => $t->set('a', ['s' => 'cd']));
        $try('incr', static fn () => $t->incr('a', 'i', 41));
        $try('incr float', static fn () => $t->incrFloat('a', 'f', 1.25));
        $try('cas miss', static fn () => $t->compareAndSet('a', 'i', 1, 7));
        $try('cas hit', static fn () => $t->compareAndSet('a', 'i', 42, -7));
        $try('cas no row', static fn () => $t->compareAndSet('b', 'i', 0, 1));
        $try('iterate', static fn () => $t->iterate());
        $try('incr negative', static fn () => $t->incr('a', 'i', -3));
        $try('wrong type', static fn () => $t->set('a', ['f' => 1]));
        $try('too long', static fn () => $t->set('a', ['s' => 'abcde']));
        $try('unknown column', static fn () => $t->get('a') === null ? null : $t->incr('a', 'nope', 1));
        $try('bad key', static fn () => $t->get(str_repeat('k', 65)));
        $try('overflow', static fn () => [$t->incr('a', 'i', PHP_INT_MAX), $t->incr('a', 'i', PHP_INT_MAX)]);
        $try('delete', static fn () => $t->delete('a'));
        $try('delete again', static fn () => $t->delete('a'));
        $try('fill', static fn () => [$t->insert('x', []), $t->insert('y', [])]);
        $try('full', static fn () => $t->insert('z', []));
        return $out;
    }
}

Runtime::run(new TestApp());
